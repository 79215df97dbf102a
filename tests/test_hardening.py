"""Bad input end to end, config fuzzing, and security checks over the whole tree."""
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, write_class_folders
from sweepcnn.config import Option, parse_args
from sweepcnn.errors import UserError
from tests.helpers import photo, write_png

TINY = ["--epochs=1", "--input_size=32", "--base_filters=4", "--dense_neurons=8", "--batch_size=8"]


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def build_corpus(root):
    """Every kind of file a scraped photo folder holds. Returns (loaded extras, expected skipped files)."""
    write_class_folders(root, per_class=10)
    loaded = {
        "cat/with space é.jpg": lambda p: photo(40, 30).save(p),
        "cat/UPPER.JPG": lambda p: photo(40, 30).save(p, format="JPEG"),
        "cat/cmyk.jpg": lambda p: photo(40, 30).convert("CMYK").save(p),
        "dog/rgba.png": lambda p: photo(40, 30).convert("RGBA").save(p),
        "dog/palette.gif": lambda p: photo(40, 30).convert("P").save(p),
        "dog/sixteen.png": lambda p: write_png(p, 4, 4, 16, 0, b"".join(b"\0" + b"\x12\x34" * 4 for _ in range(4))),
        "dog/photo.webp": lambda p: photo(40, 30).save(p),
        "owl/rotated.jpg": lambda p: p.write_bytes(_jpeg_bytes(photo(40, 30), exif=_exif_rotated())),
        "owl/one_pixel.png": lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p),
        "owl/very_wide.png": lambda p: photo(3000, 3).save(p),
    }
    skipped = {
        "cat/empty.jpg": lambda p: p.write_bytes(b""),
        "cat/truncated.jpg": lambda p: p.write_bytes(_jpeg_bytes(photo(300, 200))[:400]),
        "dog/page.jpg": lambda p: p.write_text("<!DOCTYPE html><html>404</html>"),
        "dog/noise.jpg": lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
        "owl/bomb.png": lambda p: write_png(p, 20000, 20000, 8, 2, b"\0" * 61),
        "owl/dangling.jpg": lambda p: p.symlink_to(root / "nowhere.jpg"),
    }
    for name, make in {**loaded, **skipped}.items():
        make(root / name)
    # ignored: hidden files and folders, non-image names; a symlink loop is walked once
    (root / "cat" / ".hidden.jpg").write_bytes(b"junk")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".ipynb_checkpoints").mkdir()
    (root / "dog" / ".ipynb_checkpoints" / "copy.jpg").write_bytes(b"junk")
    (root / "owl" / "loop").symlink_to(root / "owl", target_is_directory=True)
    return set(loaded), set(skipped)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return exif.tobytes()


@pytest.mark.slow
def test_bad_input_corpus_end_to_end(tmp_path):
    data = tmp_path / "photos"
    loaded, skipped = build_corpus(data)
    out = subprocess.run([sys.executable, "part_a/train.py", f"--data={data}", *TINY, f"--out_dir={tmp_path}",
                          "--run_name=r", "--test"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {s["file"] for s in summary["skipped_files"]} == skipped
    assert all(s["reason"] for s in summary["skipped_files"])
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    used = [name for part in ("train", "val", "test") for name, _ in split[part]]
    assert len(used) == len(set(used)) == 30 + len(loaded)  # every good file once, even through the loop
    assert loaded <= set(used)
    assert all(s in out.stderr for s in skipped)  # listed in the one warning

    strict = subprocess.run([sys.executable, "part_a/train.py", f"--data={data}", *TINY, "--strict",
                             f"--out_dir={tmp_path}", "--run_name=s"], cwd=ROOT, capture_output=True, text=True)
    assert strict.returncode == 2 and strict.stderr.strip().count("\n") == 0
    assert "--strict: 6 unreadable" in strict.stderr


def test_symlinked_sub_folders_are_followed(tmp_path):
    write_class_folders(tmp_path / "photos", per_class=5)
    write_class_folders(tmp_path / "more", classes=("cat",), per_class=4)
    (tmp_path / "photos" / "cat" / "more").symlink_to(tmp_path / "more" / "cat", target_is_directory=True)
    from sweepcnn.data.folders import class_files

    files = class_files(tmp_path / "photos", None)
    assert len(files["cat"]) == 9 and len(files["dog"]) == 5


# ---------------------------------------------------------------------------------------------- config fuzzing
def invalid_values(opt: Option) -> list[str]:
    bad = {"int": ["abc", "1.5"], "float": ["abc", "nan", "inf"], "bool": ["maybe"],
           "ints": ["a,b"], "strs": [], "str": []}[opt.kind]
    if opt.kind in ("int", "float"):
        bad += [str(opt.min - 1)] if opt.min is not None else []
        bad += [str(opt.max + 1)] if opt.max is not None else []
    if opt.choices:
        bad.append("definitely_not_a_choice")
    if opt.length:
        bad.append(",".join(["3"] * (opt.length + 1)))
    if not opt.nullable and opt.kind != "str":
        bad.append("none")
    return bad


def _programs():
    from part_a.train import OPTIONS as part_a

    programs = [("part_a/train.py", part_a)]
    try:
        from part_b.finetune import OPTIONS as part_b
    except ImportError:  # Part B not present in this checkout
        return programs
    return programs + [("part_b/finetune.py", part_b)]


@pytest.mark.parametrize("program, options", _programs(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_flag_rejects_invalid_values_with_one_line(program, options):
    checked = 0
    for name, opt in options.items():
        for value in invalid_values(opt):
            with pytest.raises(UserError) as err:
                parse_args([f"--{name}={value}"], options)
            message = str(err.value)
            assert f"--{name}" in message and "\n" not in message, (name, value, message)
            checked += 1
    assert checked >= 2 * len([o for o in options.values() if o.kind != "str" or o.choices])


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["--device=tpu"], "--device"),
    (["--batch_size=0"], "--batch_size"),
    (["--augmentations=hflip,spin"], "--augmentations"),
    (["--filter_sizes=3,3"], "--filter_sizes"),
    (["--config=/no/such.yaml"], "--config: file not found"),
])
def test_invalid_flags_exit_2_without_traceback(tmp_path, args, fragment):
    out = subprocess.run([sys.executable, "part_a/train.py", "--data=digits", *TINY, f"--out_dir={tmp_path}", *args],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and fragment in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0


# ---------------------------------------------------------------------------------------------- security
def _tracked_files():
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / f for f in listed.stdout.splitlines() if (ROOT / f).is_file()]


def test_every_torch_load_is_weights_only():
    calls = []
    for path in _tracked_files():
        if path.suffix != ".py":
            continue
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
                depth, end = 0, match.end() - 1
                for end in range(match.end() - 1, len(text)):  # to the matching parenthesis
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    if depth == 0:
                        break
                calls.append((path.name, text[match.start():end + 1]))
    assert calls, "no torch.load found: the check itself is broken"
    unsafe = [(f, c) for f, c in calls if "weights_only=True" not in c and f != "test_hardening.py"]
    assert not unsafe, unsafe


KEY_PATTERNS = [
    re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])"),  # W&B API keys (and anything shaped like one)
    re.compile(r"wandb_v1_[A-Za-z0-9_]{20,}"),  # W&B's newer key format
    re.compile(r"(?i)(api[_-]?key|secret|token|password)\s*[:=]\s*['\"][^'\"\s]{12,}['\"]"),
    re.compile(r"AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}|sk-[A-Za-z0-9]{32,}"),
]


def test_no_keys_or_tokens_in_the_repository():
    found = []
    for path in _tracked_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for pattern in KEY_PATTERNS:
            found += [(str(path.relative_to(ROOT)), m.group(0)[:12]) for m in pattern.finditer(text)
                      if "test_hardening.py" not in path.name]
    assert not found, found


def test_key_patterns_catch_a_planted_key():
    planted = 'WANDB_API_KEY = "' + "ab12" * 10 + '"'
    assert any(p.search(planted) for p in KEY_PATTERNS)


@pytest.mark.slow
def test_the_wandb_key_never_reaches_the_run_folder(tmp_path):
    key = "0123456789abcdef" * 2 + "01234567"  # 40 hex characters, like a real key (not one)
    env = {**os.environ, "WANDB_API_KEY": key, "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "part_a/train.py", "--data=digits", *TINY, "--max_images_per_class=10",
                          f"--out_dir={tmp_path}", "--run_name=k"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    files = [p for p in (tmp_path / "k").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)  # the offline W&B run was written
    leaked = [str(p) for p in files if key.encode() in p.read_bytes()]
    assert not leaked and key not in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------- run-folder corpus
FRESH_REFUSALS = [  # issue 11's bad invocations of a new run: one error line, and nothing is created
    ["--out_dir=/proc/x"],
    ["--out_dir=/sys/kernel"],  # exists, read-only even for root
    ["--run_name=../../escape"],
    ["--run_name=a/b"],
    ["--input_size=31"],
    ["--data=/nonexistent"],
    ["--data={photos}", "--cache_dir={a_file}"],
    ["--data={photos}", "--cache_dir=/proc/x"],
    ["--data={photos}", "--num_classes=5"],
    ["--batch_size=1"],  # BatchNorm trains (issue 17)
]
RESUME_REFUSALS = [  # ... of a resume of run r: one error line, and config.yaml, checkpoints, metrics stay as they were
    ["--base_filters=16"],
    ["--filter_counts_strategy=doubling"],
    ["--data={photos}"],
    ["--run_name=../r"],
    ["--run_name=missing"],
]


@pytest.mark.slow
def test_bad_run_folder_invocations_exit_2_and_change_nothing(tmp_path):
    from tests.sweepcnn.train.test_resume import snapshot

    photos = write_class_folders(tmp_path / "photos", per_class=4)
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "runs"
    fill = {"photos": photos, "a_file": tmp_path / "a_file"}

    def run(*args):
        proc = subprocess.run([sys.executable, "part_a/train.py", *TINY, *(a.format(**fill) for a in args)],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr

    for args in FRESH_REFUSALS:
        run(f"--out_dir={out}", *args)
        assert not out.exists() and not (tmp_path / "escape").exists(), args
    good = subprocess.run([sys.executable, "part_a/train.py", *TINY, f"--out_dir={out}", "--run_name=r"], cwd=ROOT,
                          capture_output=True, text=True)  # a run with config.yaml, checkpoints and metrics
    assert good.returncode == 0, good.stderr[-2000:]
    before = snapshot(out)
    for args in RESUME_REFUSALS:
        run(f"--out_dir={out}", "--run_name=r", "--resume", *args)
        assert snapshot(out) == before, args


# ---------------------------------------------------------------------------------------------- offline sweeps
def _sweep_yaml(tmp_path, method: str, parameters: dict, command: list[str] | None = None):
    import yaml

    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump({"program": "part_a/train.py", "method": method, "parameters": parameters,
                                    "metric": {"name": "val_acc", "goal": "maximize"},
                                    **({"command": command} if command else {})}))
    return path


def _assert_sweep_refused(tmp_path, path, sweep_dir, flags: list[str], fragment: str) -> None:
    """One error line with `fragment`, exit 2, no traceback, nothing under tmp_path changed."""
    from tests.sweepcnn.train.test_resume import snapshot

    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "sweepcnn.sweep", str(path), "--count=2", f"--sweep_dir={sweep_dir}",
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and fragment in proc.stderr, proc.stderr
    assert snapshot(tmp_path) == before and not proc.stdout


def _damaged_sweep_folder(tmp_path, state_text: str):
    from sweepcnn.sweep.folder import SweepFolder

    folder = SweepFolder(tmp_path / "sweep", {"method": "grid"})
    folder.create(tmp_path / "grid.yaml")
    folder.state_path.write_text(state_text)
    return folder.root


SWEEP_REFUSALS = {  # issue 17 item 8: (YAML method, parameters, extra flags, the folder it is given, in the error)
    "grid with a continuous parameter": ("grid", {"learning_rate": {"min": 1e-3, "max": 0.1}}, [], None,
                                         "disallowed type with grid search"),
    "the same with two workers": ("grid", {"learning_rate": {"min": 1e-3, "max": 0.1}}, ["--workers=2"], None,
                                  "disallowed type with grid search"),
    "bayes with every parameter fixed": ("bayes", {"learning_rate": {"values": [0.01, 0.1]}},
                                         ["--set", "learning_rate=0.01"], None, "searchable parameter"),
    "a corrupt state.json": ("grid", {"learning_rate": {"values": [0.01]}}, [], '{"trials": [', "state.json"),
    "a state.json of something else": ("grid", {"learning_rate": {"values": [0.01]}}, [], "[1, 2]", "state.json"),
    "a read-only --sweep_dir": ("grid", {"learning_rate": {"values": [0.01]}}, [], "/sys/kernel", "--sweep_dir"),
    "an impossible --sweep_dir": ("grid", {"learning_rate": {"values": [0.01]}}, [], "/proc/x", "--sweep_dir"),
}


@pytest.mark.parametrize("case", SWEEP_REFUSALS)
def test_bad_offline_sweeps_exit_2_and_change_nothing(tmp_path, case):
    method, parameters, flags, folder, fragment = SWEEP_REFUSALS[case]
    path = _sweep_yaml(tmp_path, method, parameters)
    if folder is None:
        sweep_dir = tmp_path / "sweep"
    elif folder.startswith("/"):
        sweep_dir = folder
    else:
        sweep_dir = _damaged_sweep_folder(tmp_path, folder)
    _assert_sweep_refused(tmp_path, path, sweep_dir, flags, fragment)


TORCHRUN = ["torchrun", "--nproc_per_node=2", "${program}", "${args}"]
LAUNCH_REFUSALS = {  # issue 18: trials of several processes (the YAML's command, flags, in the error)
    "GPUs that do not split into trials": (None, ["--gpus=0,1,2", "--gpus_per_trial=2"], "does not divide"),
    "more workers than GPU groups": (None, ["--gpus=0,1,2,3", "--gpus_per_trial=2", "--workers=3"],
                                     "at most 2 trial(s) at a time"),
    "zero processes per trial": (None, ["--gpus_per_trial=0"], "--gpus_per_trial must be at least 1"),
    "a command torchrun cannot wrap": (["${program}", "${args}"], ["--gpus_per_trial=2"], "${interpreter} ${program}"),
    "a torchrun YAML and another count": (TORCHRUN, ["--gpus_per_trial=4"], "give one of the two"),
    "a multi-node torchrun YAML": (["torchrun", "--nnodes=2", *TORCHRUN[1:]], [], "--nnodes=2"),
}


@pytest.mark.parametrize("case", LAUNCH_REFUSALS)
def test_bad_multi_process_trials_exit_2_and_change_nothing(tmp_path, case):
    command, flags, fragment = LAUNCH_REFUSALS[case]
    path = _sweep_yaml(tmp_path, "grid", {"learning_rate": {"values": [0.01]}}, command)
    _assert_sweep_refused(tmp_path, path, tmp_path / "sweep", flags, fragment)


# ---------------------------------------------------------------------------------------------- start-up corpus
# issue 17: each refused start-up is one error line, exit 2, no traceback, and writes nothing: a new run's folder is
# never made, a resumed run's folder stays byte for byte as it was. {params} is an agent parameter file.
AGENT = {"WANDB_SWEEP_ID": "s1", "WANDB_RUN_ID": "trial1", "WANDB_SWEEP_PARAM_PATH": "{params}"}
STARTUP_REFUSALS = [  # (arguments, environment, what the error names)
    (["--wandb_project=team/proj"], {}, "--wandb_entity team --wandb_project proj"),  # bug 6
    (["--wandb_project=team/proj", "--wandb_mode=disabled"], {}, "cannot contain"),
    (["--device=mps"], {}, "--device: mps"),  # bug 7
    (["--epochs=0", "--test"], {}, "--test with --epochs 0"),
    (["--run_name=" + "x" * 300], {}, "at most 255 bytes"),  # bug 13
    ([], {**AGENT, "PARAMS": "epochs: 1\n"}, "epochs: expected {value: ...}"),  # bug 12: a flat file
    ([], {**AGENT, "PARAMS": "epochs: {value: many}\n"}, "--epochs: expected an integer"),
    ([], {**AGENT, "PARAMS": None}, "file not found"),
    ([], {**AGENT, "PARAMS": "epochs: 1\n", "WANDB_MODE": "disabled"}, "epochs: expected {value: ...}"),
    ([], {**AGENT, "PARAMS": "wandb_project: {value: a/b}\n"}, "cannot contain"),
]
RESUMED_REFUSALS = [  # ... of `--resume --run_name=r` (a finished Part A run)
    (["--wandb_project=team/proj"], "cannot contain"),
    (["--device=mps"], "--device: mps"),
]


def _start(program: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, program, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline", **(env or {})})


def assert_refused(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and fragment in proc.stderr, (fragment, proc.stderr)


@pytest.mark.slow
def test_refused_start_ups_write_nothing(tmp_path):
    from tests.sweepcnn.train.test_resume import snapshot

    out = tmp_path / "runs"
    for args, env, fragment in STARTUP_REFUSALS:
        env = dict(env)
        if "PARAMS" in env:
            params, content = tmp_path / "params.yaml", env.pop("PARAMS")
            params.unlink(missing_ok=True)
            if content is not None:
                params.write_text(content)
            env["WANDB_SWEEP_PARAM_PATH"] = str(params)
        if fragment == "--device: mps" and torch_has_mps():
            continue
        assert_refused(_start("part_a/train.py", *TINY, f"--out_dir={out}", *args, env=env), fragment)
        assert not out.exists(), (args, env)
    assert _start("part_a/train.py", *TINY, "--test", "--report=false", f"--out_dir={out}", "--run_name=r",
                  "--max_images_per_class=20").returncode == 0
    before = snapshot(out)
    for args, fragment in RESUMED_REFUSALS:
        assert_refused(_start("part_a/train.py", "--resume", f"--out_dir={out}", "--run_name=r", "--epochs=2", *args),
                       fragment)
        assert snapshot(out) == before, args
    # bug 1: the other part's program refuses the run, naming the one that made it
    assert_refused(_start("part_b/finetune.py", "--resume", f"--out_dir={out}", "--run_name=r", "--epochs=2"),
                   "made by part_a/train.py")
    assert snapshot(out) == before
    # bug 14: a finished run without new epochs is left alone (its --test is not re-run)
    proc = _start("part_a/train.py", "--resume", f"--out_dir={out}", "--run_name=r")
    assert proc.returncode == 0 and "already finished after 1 epochs: nothing to do" in proc.stdout
    assert snapshot(out) == before
    # bug 2: an unreadable last.pt refuses the resume before config.yaml is touched
    (out / "r" / "last.pt").write_bytes((out / "r" / "last.pt").read_bytes()[:500])
    before = snapshot(out)
    assert_refused(_start("part_a/train.py", "--resume", f"--out_dir={out}", "--run_name=r", "--epochs=3"),
                   "truncated or corrupt")
    assert snapshot(out) == before


def torch_has_mps() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
