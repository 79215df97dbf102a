"""sweepcnn.report (the run report) on tiny models and data: figures,
interpretability maps and the layers each part names, report.html (also in headless Chromium), run folders and their
run.json, the CLI on a trained run with an offline W&B run."""
import base64
import copy
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from torch import nn
from torchvision.models import ResNet, VisionTransformer
from torchvision.models.resnet import BasicBlock

from tests.helpers import ROOT, write_class_folders
from sweepcnn.report import cli, figures, interpret, panels, plots, predictions, run_report, runs, wandb_log
from sweepcnn.report.keys import PANEL_KEYS, WANDB_TABLE_KEYS
from sweepcnn.report.predictions import MISTAKES
from sweepcnn.config import parse_args
from sweepcnn.data.datasets import ImageSet, load_data
from sweepcnn.errors import UserError
from sweepcnn.train.record import RECORD, import_path, read_record, write_record
from sweepcnn.train.spec import ModelSpec
from part_a import part as part_a
from part_a.model import CNN
from part_a.train import OPTIONS
from part_b import part as part_b
from part_b.blocks import layout_for
from tests.wandb_records import history_and_summary, records

PX = int(plots.CELL * figures.DPI)  # one image cell: 180 px
NORM = ([0.5, 0.4, 0.3], [0.25, 0.2, 0.3])


def part_a_config(**overrides) -> dict:
    cfg, _ = parse_args([f"--{k}={v}" for k, v in {"input_size": 32, "base_filters": 4, "dense_neurons": 16,
                                                    "filter_counts_strategy": "doubling", **overrides}.items()],
                        OPTIONS)
    return cfg


def tiny_cnn_spec(num_classes: int, activation: str = "relu", channels: int = 3) -> ModelSpec:
    """A tiny CNN as Part A rebuilds it for a report."""
    torch.manual_seed(0)
    spec = part_a.rebuild({"input_size": 32, "base_filters": 4, "filter_counts_strategy": "doubling",
                           "dense_neurons": 16, "activation": activation, "in_channels": channels},
                          [f"class{c}" for c in range(num_classes)])
    spec.model.eval()
    return spec


def tiny_cnn(num_classes: int, activation: str = "relu", channels: int = 3) -> nn.Module:
    return tiny_cnn_spec(num_classes, activation, channels).model


def tiny_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3).eval()


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=3)
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head: no gradient at all
    return vit.eval()


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def rendered(fig, folder: Path) -> np.ndarray:
    return png(figures.save_figure(fig, folder / "figure.png"))


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (pixels.float() / 255 - torch.tensor(NORM[0]).view(shape)) / torch.tensor(NORM[1]).view(shape)


def synthetic_results(per_class: list[int], channels: int = 3) -> predictions.TestResults:
    """Test results over random uint8 images, `per_class[c]` of class c, with random logits."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    pixels = rng.integers(0, 256, (len(labels), channels, 32, 32), dtype=np.uint8)
    images = ImageSet(pixels, np.arange(len(labels)), labels, [f"img{i}" for i in range(len(labels))])
    return predictions.TestResults(images, torch.from_numpy(rng.normal(size=(len(labels), len(per_class)))).float())


# ---------------------------------------------------------------------------------------------------- one report
HISTORY = [{"epoch": e, "train_loss": 2.3 - 0.3 * e, "val_loss": 2.2 - 0.2 * e, "train_acc": 0.2 * e,
            "val_acc": 0.15 * e, "learning_rate": 1e-3 * 0.5 ** e} for e in (1, 2, 3)]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A run folder (config, run.json, metrics, summary) with the report of a tiny CNN on digits (10 classes) and
    the comparison written into it by sweepcnn.report.compare."""
    from sweepcnn.report.compare import compare

    run = tmp_path_factory.mktemp("runs") / "digits-run"
    run.mkdir()
    cfg = part_a_config(data="digits", num_classes=10)
    data = load_data(cfg, 32, 3, progress=False)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in HISTORY))
    (run / "summary.json").write_text(json.dumps({"status": "finished", "val_acc": 0.45, "params": 12345}))
    spec = tiny_cnn_spec(10)
    write_record(run, spec, 32, 3)
    compare([run], run / "compare")
    page = run_report.build_report(run, spec.model, data, NORM, cfg, layers=spec.layers)
    return run, page, data


EXPECTED_SIZES = {  # (width, height) in pixels for the digits report: 10 classes, 64 channels in the last conv
    "predictions.png": (3 * PX, 10 * PX),
    "mistakes.png": (4 * PX, 3 * PX),
    "filters.png": (600, 600),
    "confusion_matrix.png": (1400, 800),
    "curves.png": (1300, 380),
    "guided_backprop.png": (6 * PX, 2 * PX),
    "gradcam.png": (10 * PX, 2 * PX),
    "roc_pr.png": (1000, 450),
}


def test_every_figure_has_its_size_and_is_not_blank(digits_run):
    run, page, _ = digits_run
    out = page.parent
    assert page == run / "report" / "report.html"
    assert {p.name for p in out.glob("*.png")} == set(EXPECTED_SIZES)
    for name, size in EXPECTED_SIZES.items():
        pixels = png(out / name)
        assert pixels.dtype == np.uint8 and (pixels.shape[1], pixels.shape[0]) == size, name
        assert pixels[..., :3].var() > 0, name
    assert {p.name for p in out.glob("*.csv")} == {"predictions.csv", "mistakes.csv", "confusion_matrix.csv",
                                                   "confusion_matrix_normalized.csv", "per_class.csv", "roc.csv",
                                                   "precision_recall.csv"}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_confusion_matrix_and_per_class_metrics_agree_with_the_predictions(digits_run):
    from sklearn.metrics import f1_score

    _, page, data = digits_run
    out = page.parent
    rows = read_csv(out / "predictions.csv")
    assert [row["file"] for row in rows] == data.test.names
    assert [row["true"] for row in rows] == [data.classes[y] for y in data.test.labels]
    true, pred = [row["true"] for row in rows], [row["predicted"] for row in rows]
    counts = read_csv(out / "confusion_matrix.csv")
    for row in counts:
        for c in data.classes:
            assert int(row[c]) == sum(t == row["true \\ predicted"] and p == c for t, p in zip(true, pred))
    for row in read_csv(out / "confusion_matrix_normalized.csv"):
        assert sum(float(row[c]) for c in data.classes) == pytest.approx(1.0, abs=1e-5)
    per_class = {row["class"]: row for row in read_csv(out / "per_class.csv")}
    assert list(per_class) == [*data.classes, "macro avg", "weighted avg"]
    for average in ("macro", "weighted"):
        expected = f1_score(true, pred, average=average, zero_division=0)
        assert float(per_class[f"{average} avg"]["f1"]) == pytest.approx(expected, abs=1e-5)
    mistakes = read_csv(out / "mistakes.csv")
    losses = sorted((float(row["loss"]) for row in rows), reverse=True)
    assert [float(row["loss"]) for row in mistakes] == losses[:MISTAKES]


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.ids = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if "id" in attrs:
            self.ids.append(attrs["id"])


def test_report_html_is_self_contained_and_references_only_existing_files(digits_run):
    run, page, _ = digits_run
    text = page.read_text()
    refs = _Refs()
    refs.feed(text)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert set(refs.ids) == {p.removesuffix(".png") for p in EXPECTED_SIZES}  # one section per panel
    assert len(refs.images) == len(EXPECTED_SIZES) + 1  # and the comparison plot of sweepcnn.report.compare
    for src in refs.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(src[len(prefix):]))) as image:
            assert image.width > 0
    for href in refs.links:
        assert (page.parent / href).is_file(), href
    linked = {(page.parent / href).resolve() for href in refs.links}
    assert {p.resolve() for p in (run / "compare").glob("*.csv")} <= linked
    assert {p.resolve() for p in page.parent.glob("*.csv")} <= linked
    for fragment in ("val_acc", "12345", "filter_counts_strategy", "doubling", "macro avg", "Strategy and model"):
        assert fragment in text, fragment


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);
  document.body.setAttribute("data-probe", JSON.stringify(images));
});
</script>"""


@pytest.mark.slow
def test_every_image_loads_in_headless_chromium(digits_run):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver)")
    _, page, _ = digits_run
    probe = page.with_name("probe.html")  # beside report.html, so that relative references resolve the same way
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-background-networking",
                               "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                              capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    images = json.loads(dom.probe)
    assert len(images) == len(EXPECTED_SIZES) + 1
    assert all(complete and width > 0 and height > 0 for complete, width, height in images), images


class _Dom(HTMLParser):
    probe = None

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.probe = dict(attrs).get("data-probe")


# ---------------------------------------------------------------------------------------------------- figures
@pytest.mark.parametrize("per_class, rows, filled, channels", [([4] * 12, 10, 30, 3), ([3] * 10, 10, 30, 3),
                                                                ([2, 3, 1], 3, 6, 3), ([3, 3], 2, 6, 1)])
def test_prediction_grid_is_10_by_3_and_adapts_to_fewer_classes(per_class, rows, filled, channels):
    results = synthetic_results(per_class, channels)
    classes = [f"class{c}" for c in range(len(per_class))]
    fig = plots.prediction_grid(results, classes)
    assert len(fig.axes) == rows * 3
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == (rows, 3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == filled
    expected = [i for row in predictions.grid_indices(results.images.labels, len(classes)) for i in row]
    for ax, i in zip(shown, expected):
        expected_pixels = results.images.pixels[i].transpose(1, 2, 0)
        assert np.array_equal(ax.images[0].get_array(), expected_pixels[..., 0] if channels == 1 else expected_pixels)
        right = bool(results.preds[i] == results.labels[i])
        assert ax.title.get_color() == ("tab:green" if right else "tab:red")
        assert ax.title.get_text().startswith(f"true: {classes[results.images.labels[i]]}\npred: "
                                              f"{classes[int(results.preds[i])]}")


def test_normalised_images_go_back_to_the_same_uint8_pixels():
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    back = predictions.to_uint8(normalize(pixels), NORM)
    assert back.dtype == np.uint8 and np.array_equal(back, pixels.permute(0, 2, 3, 1).numpy())


def test_two_class_tasks_get_roc_and_precision_recall(tmp_path):
    cfg = part_a_config(data=str(write_class_folders(tmp_path / "data", ("cat", "dog"), per_class=20)))
    data = load_data(cfg, 32, 3, progress=False)
    report = panels.write_panels(tmp_path / "report", tiny_cnn(2), data, NORM, cfg, [])
    assert [p.key for p in report.panels if p.key == "roc_pr"] == ["roc_pr"]
    pixels = png(tmp_path / "report" / "roc_pr.png")
    assert (pixels.shape[1], pixels.shape[0]) == (1000, 450) and pixels[..., :3].var() > 0
    assert 0 <= report.metrics["roc_auc"] <= 1 and 0 <= report.metrics["average_precision"] <= 1
    assert not (tmp_path / "report" / "curves.png").exists()  # no metrics.jsonl: no curves
    assert set(p.key for p in report.panels) <= set(PANEL_KEYS)
    roc = read_csv(tmp_path / "report" / "roc.csv")
    assert float(roc[0]["false_positive_rate"]) == 0 and float(roc[-1]["true_positive_rate"]) == 1
    assert read_csv(tmp_path / "report" / "precision_recall.csv")[0].keys() == {"class", "recall", "precision"}

    class Run:  # what log_report needs of a W&B run
        logged, summary = {}, {}

        def log(self, payload):
            self.logged.update(payload)

    run = Run()
    wandb_log.log_report(run, report)
    assert {"report/roc_pr", "report/roc_chart", "report/precision_recall_chart",
            "report/confusion_matrix_chart"} <= set(run.logged)
    assert run.summary["report/roc_auc"] == report.metrics["roc_auc"]


# ---------------------------------------------------------------------------------------------------- interpretability
class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _GuidedReLUModule(nn.Module):
    def forward(self, x):
        return _GuidedReLU.apply(x)


def _replace_relus(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, _GuidedReLUModule())
        else:
            _replace_relus(child)


def test_guided_backprop_is_exact_for_relu():
    """The hooks give what the textbook guided-ReLU function gives, neuron by neuron."""
    model = tiny_cnn(3)
    layer = part_layers(model).target
    image = torch.randn(1, 3, 32, 32)
    result = interpret.guided_backprop(model, layer, image)
    assert len(result.neurons) == interpret.NEURONS and result.activations == ["ReLU"]
    assert result.maps.shape == (interpret.NEURONS, 3, 32, 32)
    reference = copy.deepcopy(model)
    _replace_relus(reference)
    reference_layer = reference.features.block5.conv
    for gradient, (c, y, x) in zip(result.maps, result.neurons):
        probe = image.clone().requires_grad_(True)
        with interpret.capture(reference_layer) as out:
            reference(probe)
        expected, = torch.autograd.grad(out["output"][0, c, y, x], probe)
        assert torch.allclose(gradient, expected[0], atol=1e-6)
        assert gradient.abs().sum() > 0
    plain = image.clone().requires_grad_(True)  # and it is not the plain gradient
    with interpret.capture(layer) as out:
        model(plain)
    c, y, x = result.neurons[0]
    assert not torch.allclose(torch.autograd.grad(out["output"][0, c, y, x], plain)[0][0], result.maps[0])


def part_layers(model: nn.Module) -> interpret.Layers:
    """The layers the model's part names: Part A's for the CNN, Part B's (by block layout) for torchvision's."""
    if isinstance(model, CNN):
        return part_a.interpretability_layers(model)
    return part_b.interpretability_layers(model, layout_for("resnet18" if isinstance(model, ResNet) else "vit_b_16",
                                                            model))


MODELS = {"cnn_gelu": lambda: tiny_cnn(3, "gelu"), "cnn_silu": lambda: tiny_cnn(3, "silu"),
          "cnn_mish": lambda: tiny_cnn(3, "mish"), "cnn_gray": lambda: tiny_cnn(3, channels=1),
          "resnet": tiny_resnet, "vit": tiny_vit}


@pytest.mark.parametrize("name", MODELS)
def test_guided_backprop_and_gradcam_maps_have_the_input_size(name):
    model = MODELS[name]()
    layers = part_layers(model)
    channels = layers.first.in_channels
    images = torch.randn(4, channels, 32, 32)
    guided = interpret.guided_backprop(model, layers.target, images[:1])
    assert guided.maps.shape == (len(guided.neurons), channels, 32, 32) and len(guided.neurons) == interpret.NEURONS
    assert all(m.abs().sum() > 0 for m in guided.maps)
    cams, targets = interpret.grad_cam(model, layers.target, images)
    assert cams.shape == (4, 32, 32) and torch.equal(targets, model(images).argmax(1))
    assert cams.min() >= 0 and cams.max() <= 1 and cams.flatten(1).amax(1).max() == 1
    # the hooks are gone and in-place activations are in place again
    assert not any(m._backward_hooks or m._forward_hooks for m in model.modules())
    if name == "resnet":
        assert model.relu.inplace and model.layer1[0].relu.inplace


def test_interpretability_layers_per_architecture(tmp_path):
    cnn, resnet, vit = tiny_cnn(3), tiny_resnet(), tiny_vit()
    assert part_layers(cnn) == interpret.Layers(cnn.features.block1.conv, cnn.features.block5.conv)
    spec = tiny_cnn_spec(3)
    assert spec.layers == interpret.Layers(spec.model.features.block1.conv, spec.model.features.block5.conv)
    assert part_layers(resnet) == interpret.Layers(resnet.conv1, resnet.layer4)
    assert part_layers(vit) == interpret.Layers(vit.conv_proj, vit.encoder.layers[-1].ln_1)
    # any other backbone, and a model whose part names no layers: the first and last Conv2d
    mobilenet = torchvision.models.mobilenet_v3_small(num_classes=3)
    convs = [m for m in mobilenet.modules() if isinstance(m, nn.Conv2d)]
    assert part_b.interpretability_layers(mobilenet, layout_for("mobilenet_v3_small", mobilenet)) == \
        interpret.conv_layers(mobilenet) == interpret.Layers(convs[0], convs[-1])
    with pytest.raises(UserError, match="no Conv2d"):
        interpret.conv_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    # why ln_1 and not the block's output: only the class token of the output reaches the logits
    images = torch.randn(2, 3, 32, 32)
    assert interpret.grad_cam(vit, vit.encoder.layers[-1], images)[0].abs().sum() == 0
    assert interpret.grad_cam(vit, vit.encoder.layers[-1].ln_1, images)[0].abs().sum() > 0
    for model, name, shape in ((cnn, "features.block1.conv", (600, 600)), (resnet, "conv1", (600, 600)),
                               (vit, "conv_proj", (600, 600))):
        pixels = rendered(plots.filters_figure(part_layers(model).first, name), tmp_path)
        assert (pixels.shape[1], pixels.shape[0]) == shape and pixels[..., :3].var() > 0


def test_vit_tokens_map_onto_the_patch_grid():
    tokens = torch.arange(2 * 17 * 5, dtype=torch.float).view(2, 17, 5)  # class token + 4x4 patches, 5 dims
    grid = interpret.as_grid(tokens)
    assert grid.shape == (2, 5, 4, 4)
    assert torch.equal(grid[1, 3, 2, 1], tokens[1, 1 + 2 * 4 + 1, 3])


# ---------------------------------------------------------------------------------------------------- run folders
def test_load_run_model_rebuilds_a_part_b_run(tmp_path):
    from sweepcnn.train.checkpoint import save_atomic
    from part_b.finetune import OPTIONS as FINETUNE_OPTIONS
    from part_b.models import load_backbone, replace_head

    cfg, _ = parse_args(["--model=resnet18", "--weights=none", "--input_size=32"], FINETUNE_OPTIONS)
    backbone = load_backbone("resnet18", None, 32, 3)
    replace_head(backbone.model, backbone.layout, 3)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    write_record(tmp_path, ModelSpec(backbone.model, {}, rebuild=part_b.rebuild), 32, 3)  # as training writes it
    assert read_record(tmp_path)["rebuild"] == "part_b.part:rebuild"
    save_atomic({"model": backbone.model.state_dict(), "classes": ["a", "b", "c"], "epoch": 1, "metrics": {},
                 "normalization": {"mean": [0.4] * 3, "std": [0.2] * 3}, "config": cfg}, tmp_path / "best.pt")
    spec, config, classes, normalization = runs.load_run_model(tmp_path)
    model = spec.model
    assert isinstance(model, ResNet) and not model.training and classes == ["a", "b", "c"]
    assert normalization == ([0.4] * 3, [0.2] * 3) and config["model"] == "resnet18"
    assert spec.layers == interpret.Layers(model.conv1, model.layer4)
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert part_b.input_size({**config, "input_size": None}) == 224  # the weights' own size


def test_a_run_folder_records_an_importable_rebuild_function(tmp_path):
    def nested(cfg, classes):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="importable"):
        import_path(nested)
    nested.__module__ = "__main__"
    with pytest.raises(ValueError, match="importable"):
        import_path(nested)
    assert import_path(part_a.rebuild) == "part_a.part:rebuild"
    spec = tiny_cnn_spec(3)
    write_record(tmp_path, spec, 32, 3)
    record = read_record(tmp_path)
    assert record["identity"]["model"] == "part_a_cnn" and record["label"] == spec.label
    assert record["total_params"] == record["trainable_params"] == sum(p.numel() for p in spec.model.parameters())
    (tmp_path / RECORD).write_text(json.dumps({**record, "rebuild": "part_a.part:no_such_function"}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(part_a_config()))
    with pytest.raises(UserError, match="cannot import the rebuild function part_a.part:no_such_function"):
        runs.load_run_model(tmp_path)


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from sweepcnn.config import run_cli

    monkeypatch.setattr(sys, "argv", ["sweepcnn-report", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        run_cli(cli.main)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "config.yaml" in err
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(part_a_config()))
    with pytest.raises(SystemExit) as stop:  # a run folder made before runs recorded their part
        run_cli(cli.main)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "no run.json" in err
    assert '"rebuild": "part_a.part:rebuild"' in err and "part_b.part:rebuild" in err
    write_record(tmp_path, tiny_cnn_spec(10), 32, 3)
    with pytest.raises(UserError, match="checkpoint not found"):
        runs.load_run_model(tmp_path)


def test_run_data_must_match_the_runs_classes_and_test_split(tmp_path):
    cfg = part_a_config(data="digits")
    classes = [str(d) for d in range(10)]
    write_record(tmp_path, tiny_cnn_spec(10), 32, 3)
    split = load_data(cfg, 32, 3, progress=False).split_record(0)
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert runs.load_run_data(tmp_path, cfg, classes).test.names == [name for name, _ in split["test"]]
    with pytest.raises(UserError, match="trained on"):
        runs.load_run_data(tmp_path, cfg, classes[::-1])
    (tmp_path / "split.json").write_text(json.dumps({**split, "test": split["test"][1:]}))
    with pytest.raises(UserError, match="data changed"):
        runs.load_run_data(tmp_path, cfg, classes)


@pytest.mark.slow
def test_cli_rebuilds_the_report_of_a_trained_run_and_logs_it_to_an_offline_wandb_run(tmp_path):
    data = write_class_folders(tmp_path / "data")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    train = [sys.executable, "part_a/train.py", f"--data={data}", "--epochs=1", "--input_size=32", "--base_filters=4",
             "--dense_neurons=16", "--test", f"--out_dir={tmp_path / 'runs'}", "--run_name=r"]
    proc = subprocess.run(train, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "r"
    assert (run / "report" / "report.html").is_file()  # built after training's test
    record = read_record(run)
    assert record["rebuild"] == "part_a.part:rebuild" and (record["input_size"], record["in_channels"]) == (32, 3)
    assert record["identity"]["model"] == "part_a_cnn" and record["identity"]["filter_counts"] == "4-4-4-4-4"
    shutil.rmtree(run / "report")  # rebuilt here from the run folder
    proc = subprocess.run([sys.executable, "-m", "sweepcnn.report", str(run), "--wandb"], cwd=ROOT, capture_output=True,
                          text=True, env={**env, "WANDB_MODE": "offline"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"report: {run / 'report' / 'report.html'}" in proc.stdout
    assert "offline W&B run" in proc.stderr and "wandb sync" in proc.stderr
    shown = {p.stem for p in (run / "report").glob("*.png")}
    assert shown == set(PANEL_KEYS)  # three classes have ROC and PR curves too

    history, summary, _ = history_and_summary(run)  # the one offline run in run/wandb
    files = next((run / "wandb").glob("offline-run-*")) / "files"
    assert len(history) == 1
    logged = history[0]
    for key in shown:
        assert logged[f"report/{key}._type"] == "image-file"
        pixels = png(files / logged[f"report/{key}.path"])
        assert pixels.dtype == np.uint8 and pixels[..., :3].var() > 0
        assert pixels.shape == png(run / "report" / f"{key}.png").shape
        assert (logged[f"report/{key}.width"], logged[f"report/{key}.height"]) == pixels.shape[1::-1]
    for key in (*WANDB_TABLE_KEYS, "confusion_matrix_chart_table"):
        assert logged[f"report/{key}._type"] == "table-file", key
    # wandb 0.31 logs a table as an artifact: its images are files of the artifact, staged for `wandb sync`
    artifact = next(r.artifact for r in records(next(files.parent.glob("run-*.wandb")))
                    if r.WhichOneof("record_type") == "artifact" and "predictions_table" in r.artifact.name)
    staged = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
    table = json.loads(staged["report/predictions_table.table.json"].read_text())
    assert table["columns"] == ["image", "true", "predicted", "confidence", "loss"] and len(table["data"]) == 3
    for row in table["data"]:
        pixels = png(staged[row[0]["path"]])
        assert row[0]["_type"] == "image-file" and pixels.dtype == np.uint8 and pixels.shape[:2] == (32, 32)
        assert pixels.var() > 0
    run_summary = json.loads((run / "summary.json").read_text())
    assert summary["report/test_acc"] == run_summary["test_acc"]  # evaluated as training evaluated it
    assert summary["report/test_loss"] == pytest.approx(run_summary["test_loss"], rel=1e-5)


def test_a_read_only_run_folder_is_one_error_line_before_any_data_is_read(tmp_path, monkeypatch):
    import sweepcnn.io

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run_report, "load_run_model", lambda run_dir: (None, {}, [], NORM))
    monkeypatch.setattr(run_report, "load_run_data", lambda *a: pytest.fail("the data was read"))
    monkeypatch.setattr(sweepcnn.io.tempfile, "TemporaryFile", read_only)
    with pytest.raises(UserError, match=r"^RUN_DIR: cannot write to .*report \(at .*\): Permission denied$"):
        cli.main([str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_report_after_test_is_one_warning_line_with_its_traceback_in_a_file(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nmore lines of detail")

    monkeypatch.setattr(run_report, "build_report", fail)
    spec = ModelSpec(nn.Identity(), {})
    run_report.report_tested_run(tmp_path, spec, None, None, {"report": True, "report_table_rows": None}, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("warning: the report failed (RuntimeError: CUDA out of memory), traceback in "
                          f"{tmp_path / 'report' / 'error.txt'}; training and test results are saved")
    assert "Traceback" in (tmp_path / "report" / "error.txt").read_text()
