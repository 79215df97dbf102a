"""bench/gpu_check.py --dry: the GPU check's code end to end on the CPU at tiny sizes."""
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
