"""part_b/predict.py = sweepcnn.predict (one model, torch.func ensembles, runs of either part, unreadable images,
--out checked first) and sweepcnn.report.compare on real Part B runs (and Part A runs beside them)."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT, write_class_folders
from sweepcnn.errors import UserError
from sweepcnn.report.compare import compare
from sweepcnn.train.record import RECORD, write_record
from part_a import part as part_a
from part_b import part as part_b
from part_b.predict import standalone
from sweepcnn.predictor import Predictor, image_files
from sweepcnn.predictor import predict as predict_rows
from tests.wandb_records import history_and_summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two short fine-tuning runs of one architecture (different seeds), evaluated in float32 (--amp=off)."""
    root = tmp_path_factory.mktemp("part_b_runs")
    data = write_class_folders(root / "photos", per_class=12)
    env = {**os.environ, "SWEEPCNN_CACHE": str(root / "cache")}  # module scope: before the per-test cache fixture
    for seed in (0, 1):
        proc = subprocess.run([sys.executable, "part_b/finetune.py", f"--data={data}", "--model=efficientnet_lite0",
                               "--input_size=32", "--epochs=2", "--learning_rate=0.01", "--amp=off", "--test",
                               f"--seed={seed}", f"--out_dir={root / 'runs'}", f"--run_name=seed{seed}"],
                              cwd=ROOT, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
    return {"data": data, "runs": root / "runs"}


def predict(*args, check=True):
    proc = subprocess.run([sys.executable, "part_b/predict.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
def test_predictions_reproduce_the_runs_test_accuracy(runs, tmp_path):
    run = runs["runs"] / "seed0"
    split = json.loads((run / "split.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    images = tmp_path / "test_images"
    for name, _ in split["test"]:  # the run's test split
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(runs["data"] / name, images / name)
    out = tmp_path / "preds.csv"
    predict("--checkpoints", run / "best.pt", "--images", images, "--out", out)
    predicted = {row["file"]: row for row in rows(out.read_text())}
    truth = dict(split["test"])
    assert set(predicted) == set(truth)
    accuracy = sum(predicted[f]["prediction"] == label for f, label in truth.items()) / len(truth)
    assert accuracy == pytest.approx(summary["test_acc"])
    for row in predicted.values():
        probs = [float(row[f"p_{c}"]) for c in split["classes"]]
        assert sum(probs) == pytest.approx(1, abs=1e-5) and float(row["probability"]) == pytest.approx(max(probs))
        assert row["prediction"] == split["classes"][probs.index(max(probs))] and row["error"] == ""


@pytest.mark.slow
def test_ensemble_is_the_average_of_its_members_and_unreadable_images_are_reported(runs, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(runs["data"] / "cat", images / "cat")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "notes.txt").write_text("not an image")  # no image extension: ignored
    (images / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a dangling symlink: a row with its error
    a, b = runs["runs"] / "seed0" / "best.pt", runs["runs"] / "seed1" / "best.pt"
    files, root = image_files(images)
    single = [{r["file"]: r for r in predict_rows(Predictor([ckpt], torch.device("cpu")), files, root, 5)}
              for ckpt in (a, b)]
    proc = predict("--checkpoints", a, b, "--images", images)
    ensemble = {r["file"]: r for r in rows(proc.stdout)}
    assert set(ensemble) == {f"cat/img_{i:03d}.jpg" for i in range(12)} | {"broken.jpg", "gone.jpg"}
    assert ensemble["broken.jpg"]["prediction"] == "" and "corrupt" in ensemble["broken.jpg"]["error"]
    assert ensemble["gone.jpg"]["error"] == "cannot read file: No such file or directory"
    assert "12 of 14 images predicted with 2 model(s)" in proc.stderr
    classes = ["cat", "dog", "owl"]
    differs = 0
    for name, row in ensemble.items():
        if name in ("broken.jpg", "gone.jpg"):
            continue
        for c in classes:
            mean = (single[0][name][f"p_{c}"] + single[1][name][f"p_{c}"]) / 2
            assert float(row[f"p_{c}"]) == pytest.approx(mean, abs=1e-5)
            differs += abs(single[0][name][f"p_{c}"] - single[1][name][f"p_{c}"]) > 1e-4
    assert differs  # the two members really are different models


@pytest.mark.slow
def test_predict_uses_the_runs_tta_unless_told_otherwise(runs, tmp_path):
    state = torch.load(runs["runs"] / "seed0" / "best.pt", weights_only=True)
    state["config"]["tta"] = "flip"
    torch.save(state, tmp_path / "flip.pt")  # outside its run folder: Part B's config says how to rebuild it
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    flip = Predictor([tmp_path / "flip.pt"], torch.device("cpu"), standalone=standalone)
    plain = Predictor([tmp_path / "flip.pt"], torch.device("cpu"), tta="none", standalone=standalone)
    assert (flip.tta, plain.tta) == ("flip", "none") and flip.inputs == [(32, 3)]
    model, group = flip.models[0], flip.groups[0]
    x = (images.float() - group.mean) / group.std
    with torch.no_grad():
        expected = ((model(x) + model(x.flip(-1))) / 2).softmax(-1)
        torch.testing.assert_close(flip({(32, 3): images}), expected)
        torch.testing.assert_close(plain({(32, 3): images}), model(x).softmax(-1))
    assert not torch.allclose(flip({(32, 3): images}), plain({(32, 3): images}))
    ensemble = Predictor([tmp_path / "flip.pt", runs["runs"] / "seed1" / "best.pt"], torch.device("cpu"),
                         standalone=standalone)
    assert ensemble.tta == "flip"  # the first checkpoint's


@pytest.fixture(scope="module")
def part_a_run(runs) -> Path:
    """A short Part A run on the same photos (same classes) at another input size than the Part B runs."""
    env = {**os.environ, "SWEEPCNN_CACHE": str(runs["runs"].parent / "cache")}
    proc = subprocess.run([sys.executable, "part_a/train.py", f"--data={runs['data']}", "--input_size=40",
                           "--base_filters=4", "--dense_neurons=8", "--batch_size=8", "--epochs=2", "--amp=off",
                           "--test", "--report=false", "--wandb_mode=disabled", f"--out_dir={runs['runs'].parent}",
                           "--run_name=part_a"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return runs["runs"].parent / "part_a"


def _copy_test_split(run: Path, data: Path, images: Path) -> dict:
    split = json.loads((run / "split.json").read_text())
    for name, _ in split["test"]:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / name, images / name)
    return dict(split["test"])


@pytest.mark.slow
def test_a_part_a_run_predicts_its_test_accuracy(runs, part_a_run, tmp_path):
    truth = _copy_test_split(part_a_run, runs["data"], tmp_path / "images")
    for command in (["part_b/predict.py"], ["-m", "sweepcnn.predict"]):  # its run folder stands for its best.pt
        proc = subprocess.run([sys.executable, *command, "--checkpoints", str(part_a_run), "--images",
                               str(tmp_path / "images")], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        predicted = {row["file"]: row["prediction"] for row in rows(proc.stdout)}
        accuracy = sum(predicted[f] == label for f, label in truth.items()) / len(truth)
        assert accuracy == pytest.approx(json.loads((part_a_run / "summary.json").read_text())["test_acc"])
    shutil.copy(part_a_run / "best.pt", tmp_path / "copied.pt")  # a Part A config does not say how to rebuild it
    proc = predict("--checkpoints", tmp_path / "copied.pt", "--images", tmp_path / "images", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --checkpoints: no run.json beside")
    assert proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_an_ensemble_may_mix_parts_and_input_sizes_of_one_list_of_classes(runs, part_a_run, tmp_path):
    checkpoints = [part_a_run / "best.pt", runs["runs"] / "seed0" / "best.pt", runs["runs"] / "seed1" / "best.pt"]
    files, root = image_files(runs["data"] / "dog")
    single = [predict_rows(Predictor([c], torch.device("cpu")), files, root, 5) for c in checkpoints]
    mixed = Predictor(checkpoints, torch.device("cpu"))
    assert mixed.inputs == [(40, 3), (32, 3)] and [len(g.models) for g in mixed.groups] == [1, 2]  # B's: batched
    ensemble = predict_rows(mixed, files, root, 5)
    for i, row in enumerate(ensemble):
        for c in ("cat", "dog", "owl"):
            assert row[f"p_{c}"] == pytest.approx(sum(s[i][f"p_{c}"] for s in single) / 3, abs=1e-5)

    state = torch.load(checkpoints[1], weights_only=True)
    state["classes"] = ["cat", "owl", "dog"]
    torch.save(state, tmp_path / "reordered.pt")
    proc = predict("--checkpoints", part_a_run, tmp_path / "reordered.pt", "--images", runs["data"], check=False)
    assert proc.returncode == 2 and "an ensemble averages one list of classes" in proc.stderr
    assert proc.stderr.startswith("error: --checkpoints: ") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_bad_out_is_refused_before_anything_is_loaded_and_no_input_is_overwritten(runs, tmp_path):
    run = runs["runs"] / "seed0"
    images = tmp_path / "images"
    shutil.copytree(runs["data"] / "owl", images / "owl")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")  # loading it would be the error
    (tmp_path / "a_file").write_text("x")
    watched = [run / "best.pt", run / RECORD, images / "owl" / "img_000.jpg"]
    before = [p.read_bytes() for p in watched]
    (tmp_path / "link.csv").symlink_to(run / "best.pt")
    cases = {
        tmp_path / "missing" / "preds.csv": "does not exist",
        tmp_path / "a_file" / "preds.csv": "is not a folder",
        tmp_path: "is a folder",
        Path("/sys/kernel/preds.csv"): "cannot write to /sys/kernel",  # read-only, even for root
        run / "best.pt": "is an input",
        run / RECORD: "is an input",
        images / "owl" / "img_000.jpg": "is an input",
        tmp_path / "link.csv": "is an input",
    }
    for out, fragment in cases.items():
        proc = predict("--checkpoints", run / "best.pt", tmp_path / "corrupt.pt", "--images", images, "--out", out,
                       check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("error: --out: "), (out, proc.stderr)
        assert fragment in proc.stderr and proc.stderr.count("\n") == 1 and proc.stdout == "", (out, proc.stderr)
    assert [p.read_bytes() for p in watched] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "corrupt.pt", "images", "link.csv"]


def write_run(folder: Path, **summary) -> None:
    """A Part B run folder's summary.json and run.json, as training writes them."""
    folder.mkdir(parents=True)
    summary = {"status": "finished", "schedule": "single", **summary}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": summary["model"]}))
    identity = part_b.identity(summary)
    (folder / RECORD).write_text(json.dumps({"rebuild": "part_b.part:rebuild", "identity": identity,
                                             "label": part_b.label(identity), **{k: summary[k] for k in (
                                                 "total_params", "trainable_params")}}))


@pytest.mark.slow
def test_compare_tables_pick_the_best_run_by_validation_accuracy(runs, tmp_path):
    sweep = tmp_path / "sweep"
    common = {"weights": "DEFAULT", "total_params": 1000, "train_seconds": 5.0, "images_per_sec": 50.0,
              "epochs_run": 3, "k": None}
    write_run(sweep / "runs" / "a", model="resnet50", strategy="none", val_acc=0.9, test_acc=0.5,
              trainable_params=1000, **common)
    write_run(sweep / "runs" / "b", model="resnet50", strategy="none", val_acc=0.8, test_acc=0.95,
              trainable_params=1000, **common)
    write_run(sweep / "runs" / "c", model="resnet50", strategy="all_except_last", val_acc=0.85, test_acc=0.9,
              trainable_params=10, **common)
    strategies, models = compare([sweep, runs["runs"] / "seed0", runs["runs"] / "seed1"], tmp_path / "out")
    by_strategy = {(r["model"], r["strategy"]): r for r in strategies}
    assert by_strategy[("resnet50", "none")]["run"].endswith("a") and by_strategy[("resnet50", "none")]["runs"] == 2
    assert by_strategy[("efficientnet_lite0", "all_except_last")]["runs"] == 2
    lite = json.loads((runs["runs"] / "seed0" / "summary.json").read_text())
    assert by_strategy[("efficientnet_lite0", "all_except_last")]["trainable_params"] == lite["trainable_params"]
    assert [r["model"] for r in models][0] in ("resnet50", "efficientnet_lite0")
    assert next(r for r in models if r["model"] == "resnet50")["run"].endswith("a")
    with open(tmp_path / "out" / "strategies.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and {"val_acc", "test_acc", "trainable_params", "total_params", "train_seconds",
                                "images_per_sec", "epochs_run"} <= set(table[0])
    assert (tmp_path / "out" / "models.md").read_text().startswith("| model |")
    assert "| 1,000 | 1,000 |" in (tmp_path / "out" / "strategies.md").read_text()  # parameter counts grouped
    assert (tmp_path / "out" / "trainable_params.png").stat().st_size > 5000


@pytest.mark.slow
def test_compare_cli_logs_wandb_tables_offline(runs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sweepcnn.report.compare", str(runs["runs"]), "--out",
                           str(tmp_path / "cmp"), "--wandb_mode", "offline"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "## Strategies" in proc.stdout and "efficientnet_lite0" in proc.stdout
    assert "offline W&B run" in proc.stderr and "wandb sync" in proc.stderr  # W&B's own banner is silenced
    history, _, files = history_and_summary(tmp_path / "cmp")
    logged = history[0]
    assert logged["strategy_comparison._type"] == logged["model_comparison._type"] == "table-file"
    assert logged["strategy_comparison.nrows"] == 1 and logged["trainable_params._type"] == "image-file"
    assert sum(f.endswith(".table.json") for f in files) == 2 and any(f.endswith(".png") for f in files)


@pytest.mark.slow
def test_compare_shows_part_a_runs_by_their_own_identity(runs, tmp_path):
    spec = part_a.rebuild({"input_size": 32, "base_filters": 4}, ["cat", "dog", "owl"])
    for name, val_acc in (("cnn1", 0.5), ("cnn2", 0.6)):
        write_record(tmp_path / "a" / name, spec, 32, 3)
        (tmp_path / "a" / name / "summary.json").write_text(json.dumps({"status": "finished", "val_acc": val_acc}))
    strategies, models = compare([tmp_path / "a", runs["runs"] / "seed0"], tmp_path / "out")
    cnn = next(r for r in strategies if r["model"] == "part_a_cnn")
    assert cnn["runs"] == 2 and cnn["run"].endswith("cnn2") and cnn["filter_counts"] == "4-4-4-4-4"
    assert cnn["trainable_params"] == cnn["total_params"] == sum(p.numel() for p in spec.model.parameters())
    assert [r["model"] for r in models] == [r["model"] for r in sorted(models, key=lambda r: -r["val_acc"])]
    with open(tmp_path / "out" / "strategies.csv") as f:
        table = {row["model"]: row for row in csv.DictReader(f)}
    assert list(next(iter(table.values())))[:5] == ["model", "weights", "strategy", "k", "schedule"]
    assert table["part_a_cnn"]["strategy"] == "" and table["efficientnet_lite0"]["filter_counts"] == ""
    assert table["part_a_cnn"]["activation"] == "relu" and table["efficientnet_lite0"]["strategy"] == "all_except_last"
    (tmp_path / "a" / "cnn1" / RECORD).unlink()  # a run made before run.json
    with pytest.raises(UserError, match="no run.json"):
        compare([tmp_path / "a"], tmp_path / "out")


def test_compare_starts_no_torch():
    code = "import sys, sweepcnn.report.compare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
