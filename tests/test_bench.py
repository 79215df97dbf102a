"""The benchmarks run: bench/gpu_check.py --dry (its code end to end on the CPU at tiny sizes), and
bench/run.py --quick is a smoke test."""
import json

import pytest

from tests.helpers import run_script


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_in_its_dry_mode(tmp_path):
    proc = run_script("bench/gpu_check.py", "--dry", f"--out={tmp_path}", f"--json={tmp_path / 'gpu.json'}",
                      timeout=900)
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "gpu.json").read_text())
    assert printed["dry"] and printed["cuda_tests"]["rc"] in (0, 5), printed["cuda_tests"]
    assert printed["gpu_errors"] == {} and printed["gpu_skipped"] == [], printed["gpu_errors"]
    for name in ("cnn_aug_false", "cnn_aug_true", "resnet50_head", "resnet50_full"):
        assert printed[f"gpu_{name}_images_per_s"] > 0, name
    assert printed["gpu_torchrun_1_images_per_s"] > 0
    assert printed["gpu_amp_dtype"] in ("bfloat16", "float32")
    assert "bench [" in proc.stderr  # one progress line per measure


def test_bench_quick_is_a_smoke_test_that_judges_no_target(tmp_path, monkeypatch, capsys):
    import importlib.util
    import sys

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = {"epoch_speedup_vs_naive": 1.0, "aug_default_ratio": 0.5}  # both below their targets
    monkeypatch.setattr(bench, "speed_and_accuracy", lambda *args: dict(figures))
    monkeypatch.setattr(bench, "augmentation_overhead", lambda *args: {})
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    for quick in (True, False):
        monkeypatch.setattr(sys, "argv", ["run.py", f"--out={tmp_path / str(quick)}", f"--data={tmp_path / 'none'}",
                                          *(["--quick"] if quick else [])])
        bench.main()
        out, err = capsys.readouterr()
        assert ("NOT met" in out) != quick and ("no target is judged" in out) == quick
        assert "bench [" in err and "aug_default_ratio" in err  # the measurement's progress line
