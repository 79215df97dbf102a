"""One command that checks a CUDA machine, in under 8 minutes on one GPU, with no network and nothing outside this
checkout's install:

    python bench/gpu_check.py          # writes bench/gpu-<device name>.json and prints it as one JSON line
    python bench/gpu_check.py --dry    # the same code on the CPU at tiny sizes (tests/test_bench.py runs it)

1. the CUDA tests (`pytest -m cuda`: AMP, no host syncs in the training step, device data, augmentation);
2. images/s of the last training epoch of each run of bench/run.py's GPU measures: the default CNN at 224 px with
   and without the default augmentation (data on the GPU, --amp auto), resnet50 fine-tuning the head alone and the
   whole network (ImageNet weights where torch's cache has them, else random: the same speed), each without and
   with --compile; on a machine with two GPUs, the CNN under torchrun with 1 and 2 processes.
The images are generated (class folders of noisy JPEGs), so the check needs no data set. A measure that would start
after the time budget is listed as skipped; one that fails is listed with the end of its error output.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sweepcnn, part_a and part_b, whatever else is installed

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from run import gpu_figures, measure_speed, step  # noqa: E402

BUDGET_S = 8 * 60 - 20  # the whole check, with a margin for writing the results
TESTS_S = 150  # the CUDA tests' share of it


def photo_folders(root: Path, classes: int, per_class: int, size: int) -> Path:
    """Class folders of JPEGs: one mean colour per class plus noise (learnable, decodes like photos)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        tint = rng.integers(40, 215, 3)
        for i in range(per_class):
            pixels = np.clip(tint + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=85)
    return root


def cuda_tests(timeout: float) -> dict:
    """`pytest -m cuda` over the test suite: its exit code and counts (passed, failed, skipped, ...)."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": None, "error": f"timed out after {timeout:.0f} s"}
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    result = {"rc": proc.returncode, **counts}
    if proc.returncode not in (0, 5):  # 5: no test collected
        result["output"] = (proc.stdout + proc.stderr)[-3000:]
    return result


def torchrun_figures(out: Path, data_flags: list[str], epochs: int, device: str, processes: tuple[int, ...],
                     results: dict, deadline: float) -> None:
    """gpu_torchrun_<n>_images_per_s: the CNN with augmentation under torchrun with n processes (rank 0's metrics
    row of the last epoch), see bench/run.py's measure_speed."""
    for n in processes:
        launcher = ("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}")
        measure_speed(out, f"gpu_torchrun_{n}", [*data_flags, f"--epochs={epochs}", f"--device={device}",
                                                 "--augmentation=true"], results, deadline, launcher=launcher)


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="the same code on the CPU at tiny sizes, no --compile")
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"), help="where the runs and images go")
    parser.add_argument("--json", help="the results file (default: bench/gpu-<device name>.json; with --dry, "
                                       "gpu-dry.json in --out)")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + BUDGET_S
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here: run on a GPU machine, or with --dry to try the code on the CPU")
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    os.environ.setdefault("SWEEPCNN_CACHE", str(out / "cache"))  # the runs' decoded images stay with the runs
    device = "cpu" if args.dry else "cuda"
    name = "cpu (dry run)" if args.dry else torch.cuda.get_device_name(0)
    results: dict = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "dry": args.dry,
                     "gpus": torch.cuda.device_count()}
    if not args.dry:
        results["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    step("CUDA tests (pytest -m cuda)")
    results["cuda_tests"] = cuda_tests(TESTS_S)
    step("generating the images")
    data = photo_folders(out / "photos", 10, 8 if args.dry else 200, 40 if args.dry else 256)
    flags = [f"--data={data}", f"--input_size={32 if args.dry else 224}", f"--batch_size={8 if args.dry else 64}"]
    epochs = 1 if args.dry else 2
    results.update(gpu_figures(out, flags, epochs, device, compiled=not args.dry, deadline=deadline))
    processes = (1,) if args.dry else (1, 2) if torch.cuda.device_count() >= 2 else ()
    torchrun_figures(out, flags, epochs, device, processes, results, deadline)
    results["seconds"] = time.monotonic() - start
    path = Path(args.json) if args.json else (out / "gpu-dry.json" if args.dry
                                               else ROOT / "bench" / f"gpu-{device_slug(name)}.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
