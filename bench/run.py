"""Side-by-side benchmarks on one machine, one model and one data subset; prints a table and a final JSON line.

    python bench/run.py            # about 5 minutes on 2 CPU cores
    python bench/run.py --quick    # a smoke test: every measurement at sizes too small to mean anything, no target
                                   # judged (it checks that the benchmark runs, not how fast anything is)

Each measurement prints one line to stderr as it starts.

- epoch_speedup_vs_naive: one training epoch (data + compute) of bench/naive.py (PIL decode every epoch, fp32, NCHW,
  default allocator) over ours (decoded-image cache, channels_last, bf16 autocast where native, tuned allocator),
  same CNN, batch size, optimiser and training files (an imagenette subset at 224 x 224).
- train_gflops_ratio: our training GFLOP/s (3 x the analytic forward FLOPs per image x images/s: backward costs
  about twice the forward) over a large channels_last convolution's forward GFLOP/s in the same precision.
- loader_over_model: images/s of the cached data loader alone over images/s of training.
- hyperband_epoch_fraction, hyperband_best_gap: the same grid of trials swept offline with and without hyperband;
  the share of epochs trained, and the best val_acc without minus with (in points).
- bf16_acc_gap: final val_acc with bf16 autocast minus fp32, per seed, beside the seed-to-seed spread.
- aug_default_ratio, aug_trivial_ratio: training images/s of the default CNN (224 px, batch 64) with the default
  augmentation set, and with trivialaugment, over images/s without augmentation: the same model, optimiser and
  batches in one process, interleaved epoch by epoch (none, default, trivial, none, ...), the median of the rounds'
  ratios. aug_loader_over_model: the loader plus the default augmentation alone over training with it.
- compile_ratio: training images/s of the default CNN with --compile=true over without (the second epoch of each
  run: the first compiles); below 1 on the CPUs measured so far, so --compile is off by default.
- on CUDA also gpu_*: images/s of the default CNN at 224 with and without augmentation (data on the GPU), and of
  resnet50 fine-tuning the head alone and the whole network (ImageNet weights, or random ones where absent), each
  with and without --compile (bench/gpu_check.py runs these alone, with the CUDA tests).

    python bench/run.py --only augmentation   # the augmentation and GPU measurements alone
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from sweepcnn.data.augment import Augment
from sweepcnn.options import AUGMENT_OPTIONS, DATA_OPTIONS
from sweepcnn.data.datasets import channel_stats, load_data, make_loader
from sweepcnn.runtime import autocast, resolve_amp, tune_allocator
from sweepcnn.train.engine import Batches, train_one_epoch
from part_a.counting import count_cnn
from part_a.model import build_cnn
from part_a.cnn_config import MODEL_OPTIONS

ROOT = Path(__file__).resolve().parents[1]

IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"


def sh(command: list[str], env: dict | None = None, timeout: float | None = None) -> str:
    """The command's stdout. Past `timeout` it is stopped with SIGTERM first: torchrun hands that on to its workers,
    which run in sessions of their own and would outlive a SIGKILL of torchrun, holding their GPUs."""
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{stderr[-3000:]}")
    return stdout


STARTED = time.monotonic()


def step(name: str) -> None:
    """One progress line per measurement, on stderr (stdout keeps the table and the JSON line)."""
    print(f"bench [{time.monotonic() - STARTED:6.0f} s] {name}", file=sys.stderr, flush=True)


def train(out: Path, name: str, *flags: str, env: dict | None = None, script: str = "part_a/train.py",
          launcher: tuple[str, ...] = (), timeout: float | None = None) -> tuple[list[dict], dict]:
    """A training run (`launcher`: arguments of python before the script, e.g. -m torch.distributed.run ...):
    its metrics.jsonl rows and its summary."""
    sh([sys.executable, *launcher, script, f"--out_dir={out}", f"--run_name={name}", "--wandb_mode=disabled", *flags],
       env={"TQDM_DISABLE": "1", **(env or {})}, timeout=timeout)
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / name / "summary.json").read_text())


def epoch_speedup(data: Path, per_class: int, out: Path) -> dict:
    rows, _ = train(out, "ours", f"--data={data}", f"--max_images_per_class={per_class}", "--epochs=2")
    split = json.loads((out / "ours" / "split.json").read_text())
    images = len(split["train"])
    ours = images / rows[-1]["images_per_sec"]  # the training pass of epoch 2 (the cache was built before epoch 1)
    naive = json.loads(sh([sys.executable, "bench/naive.py", f"--root={data}", f"--files={out / 'ours' / 'split.json'}",
                           "--epochs=2"]))
    return {"images": images, "ours_epoch_s": ours, "naive_epoch_s": naive["epoch_seconds"][-1],
            "ours_images_per_s": rows[-1]["images_per_sec"],
            "epoch_speedup_vs_naive": naive["epoch_seconds"][-1] / ours}


def conv_ceiling(batch: int = 32) -> float:
    """Forward GFLOP/s of a large 3x3 convolution, channels_last, in the precision training uses here."""
    tune_allocator()
    amp = resolve_amp("auto", torch.device("cpu"))
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 128, 56, 56).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * 56 * 56 * 128 * 128 * 9
    with torch.no_grad(), autocast(torch.device("cpu"), amp):
        for _ in range(3):
            conv(x)
        start, n = time.perf_counter(), 10
        for _ in range(n):
            conv(x)
    return flops * n / (time.perf_counter() - start) / 1e9


def loader_speed(data: Path, per_class: int, batch: int = 64) -> float:
    cfg = {name: opt.default for name, opt in DATA_OPTIONS.items()}
    cfg.update(data=str(data), max_images_per_class=per_class)
    images = load_data(cfg, 224, 3, progress=False).train
    loader = make_loader(images, batch, True, cfg, torch.Generator().manual_seed(0), pin_memory=False)
    start, count = time.perf_counter(), 0
    for _ in range(3):
        for x, _ in loader:
            count += len(x)
    return count / (time.perf_counter() - start)


def hyperband(out: Path, epochs: int, learning_rates: list[float]) -> dict:
    results = {}
    for name, early in (("without", None), ("with", {"type": "hyperband", "min_iter": 1, "eta": 3})):
        sweep = {"program": "part_a/train.py", "method": "grid", "metric": {"name": "val_acc", "goal": "maximize"},
                 "command": ["${env}", "${interpreter}", "${program}", "${args}"],
                 "parameters": {"data": {"value": "digits"}, "input_size": {"value": 64}, "epochs": {"value": epochs},
                                "base_filters": {"value": 8}, "scheduler": {"value": "none"},
                                "learning_rate": {"values": learning_rates},
                                "batch_norm": {"values": [True, False]}}}
        if early:
            sweep["early_terminate"] = early
        path = out / f"hyperband_{name}.yaml"
        path.write_text(yaml.safe_dump(sweep))
        count = 2 * len(learning_rates)
        sh([sys.executable, "-m", "sweepcnn.sweep", str(path), "--count", str(count), "--sweep_dir",
            str(out / f"sweep_{name}"), "--poll", "0.5"], env={"WANDB_MODE": "disabled", "TQDM_DISABLE": "1"})
        with open(out / f"sweep_{name}" / "trials.csv") as f:
            trials = list(csv.DictReader(f))
        results[name] = {"epochs": sum(int(t["epochs_run"]) for t in trials),
                         "best": max(float(t["val_acc"]) for t in trials if t["val_acc"]),
                         "stopped": sum(t["state"] == "stopped" for t in trials), "trials": len(trials)}
    return {"hyperband": results,
            "hyperband_epoch_fraction": results["with"]["epochs"] / results["without"]["epochs"],
            "hyperband_best_gap": 100 * (results["without"]["best"] - results["with"]["best"])}


def bf16_gap(out: Path, flags: list[str], seeds: list[int]) -> dict:
    acc = {}
    for amp in ("bf16", "off"):
        for seed in seeds:
            rows, _ = train(out, f"{amp}_{seed}", *flags, f"--amp={amp}", f"--seed={seed}")
            acc[(amp, seed)] = rows[-1]["val_acc"]
    gaps = [acc[("bf16", s)] - acc[("off", s)] for s in seeds]
    spread = max(acc[("off", s)] for s in seeds) - min(acc[("off", s)] for s in seeds)
    return {"bf16_val_acc": [acc[("bf16", s)] for s in seeds], "fp32_val_acc": [acc[("off", s)] for s in seeds],
            "bf16_acc_gap": sum(gaps) / len(gaps), "fp32_seed_spread": spread}


def speed_and_accuracy(data: Path, found: bool, per_class: int, out: Path, quick: bool) -> dict:
    """The measurements before the augmentation ones: speed, GFLOP/s and loader (imagenette), hyperband, bf16."""
    results: dict = {}
    if found:
        step("epoch_speedup_vs_naive: one epoch of ours and of bench/naive.py")
        results.update(epoch_speedup(data, per_class, out))
        flops = count_cnn({"input_size": 224})["flops"]
        results["train_gflops"] = 3 * flops * results["ours_images_per_s"] / 1e9
        step("train_gflops_ratio: the convolution ceiling")
        results["conv_ceiling_gflops"] = conv_ceiling()
        results["train_gflops_ratio"] = results["train_gflops"] / results["conv_ceiling_gflops"]
        step("loader_over_model: the data loader alone")
        results["loader_images_per_s"] = loader_speed(data, per_class)
        results["loader_over_model"] = results["loader_images_per_s"] / results["ours_images_per_s"]
        bf16_flags = [f"--data={data}", f"--max_images_per_class={40 if quick else 150}", "--input_size=128",
                      f"--epochs={2 if quick else 6}"]
    else:
        print(f"{data} not found: skipping the imagenette measurements (speed, GFLOP/s, loader)")
        bf16_flags = ["--data=digits", "--input_size=32", "--epochs=3"]
    step("hyperband: two offline sweeps")
    results.update(hyperband(out, 3 if quick else 9, [0.02, 1e-5] if quick else [0.02, 0.005, 3e-4, 1e-5]))
    step("bf16_acc_gap: bf16 and fp32 runs")
    results.update(bf16_gap(out, bf16_flags, [0] if quick else [0, 1]))
    results["bf16_data"] = " ".join(bf16_flags)
    step("compile_ratio: runs with and without --compile")
    results.update(compile_ratio(out, [f"--data={data}", f"--max_images_per_class={per_class}", "--input_size=224"]
                                 if found else ["--data=digits", "--input_size=64"]))
    return results


def compile_ratio(out: Path, data_flags: list[str]) -> dict:
    """Training images/s of the second epoch with --compile=true over without (see the module docstring)."""
    speed = {}
    for compiled in ("false", "true"):
        rows, _ = train(out, f"compile_{compiled}", *data_flags, "--epochs=2", f"--compile={compiled}")
        speed[compiled] = rows[-1]["images_per_sec"]
    return {"compile_images_per_s": speed, "compile_ratio": speed["true"] / speed["false"]}


def augmentation_overhead(data: str, per_class: int, rounds: int) -> dict:
    """aug_default_ratio, aug_trivial_ratio and aug_loader_over_model (see the module docstring), on the CPU."""
    tune_allocator()
    cfg = {name: opt.default for name, opt in DATA_OPTIONS.items()}
    cfg.update(data=data, max_images_per_class=per_class)
    images = load_data(cfg, 224, 3, progress=False).train
    model = build_cnn({**{k: o.default for k, o in MODEL_OPTIONS.items()}, "num_classes": len(set(images.labels))})
    model.to(memory_format=torch.channels_last)
    device = torch.device("cpu")
    optimizer, loss = torch.optim.Adam(model.parameters(), lr=1e-4), torch.nn.CrossEntropyLoss()
    scaler, amp = torch.amp.GradScaler("cpu", enabled=False), resolve_amp("auto", device)
    plain = Batches(*channel_stats(images), device, True)
    generator = torch.Generator().manual_seed(0)
    configs = {"none": plain,
               "default": plain.augmented(Augment(AUGMENT_OPTIONS["augmentations"].default, 3), generator),
               "trivial": plain.augmented(Augment(["trivialaugment"], 3), generator)}
    loader = make_loader(images, 64, True, cfg, torch.Generator().manual_seed(0), False)

    def speed(batches: Batches) -> float:
        return train_one_epoch(model, loader, batches, amp, optimizer, scaler, loss, None, "epoch", None,
                               "bench")["images_per_sec"]

    speed(plain)  # warm-up
    seen = {name: [] for name in configs}
    for _ in range(rounds):
        for name, batches in configs.items():
            seen[name].append(speed(batches))
    start, count = time.perf_counter(), 0
    for x, y in loader:
        configs["default"](x, y)
        count += len(x)
    loader_speed_ = count / (time.perf_counter() - start)
    ratio = {name: statistics.median(a / b for a, b in zip(seen[name], seen["none"])) for name in configs}
    return {"aug_images": len(images), "aug_rounds": rounds,
            "aug_images_per_s": {name: statistics.median(v) for name, v in seen.items()},
            "aug_default_ratio": ratio["default"], "aug_trivial_ratio": ratio["trivial"],
            "aug_loader_images_per_s": loader_speed_,
            "aug_loader_over_model": loader_speed_ / statistics.median(seen["default"])}


def resnet50_weights() -> str:
    """DEFAULT where torch's cache holds resnet50's ImageNet weights (no download), else none: random weights, the
    same speed."""
    from torchvision.models import ResNet50_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet50_Weights.DEFAULT.url).name
    return "DEFAULT" if cached.is_file() else "none"


def gpu_measures(weights: str, compiled: bool) -> list[tuple[str, str, list[str]]]:
    """(name, script, flags) of each GPU figure, the plain ones first, then (`compiled`) each with --compile."""
    plain = [("cnn_aug_false", "part_a/train.py", ["--augmentation=false"]),
             ("cnn_aug_true", "part_a/train.py", ["--augmentation=true"])]
    plain += [(f"resnet50_{part}", "part_b/finetune.py",
               ["--model=resnet50", f"--strategy={strategy}", "--augmentation=true", f"--weights={weights}"])
              for part, strategy in (("head", "all_except_last"), ("full", "none"))]
    return plain + ([(f"{name}_compile", script, [*flags, "--compile=true"]) for name, script, flags in plain]
                    if compiled else [])


def measure_speed(out: Path, name: str, flags: list[str], results: dict, deadline: float | None = None,
                  script: str = "part_a/train.py", launcher: tuple[str, ...] = ()) -> dict | None:
    """Train run `name` and set results[name + "_images_per_s"] to its last epoch's images/s; a run that fails is
    named in results["gpu_errors"] with the end of its output, one that would start after `deadline`
    (time.monotonic()) in results["gpu_skipped"]. Returns the run's summary (None if it did not run)."""
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left < 10:
        results.setdefault("gpu_skipped", []).append(name)
        return None
    step(name)
    try:
        rows, summary = train(out, name, *flags, script=script, launcher=launcher, timeout=left)
    except (SystemExit, subprocess.TimeoutExpired) as failure:
        results.setdefault("gpu_errors", {})[name] = str(failure)[-1500:]
        return None
    results[f"{name}_images_per_s"] = rows[-1]["images_per_sec"]
    return summary


def gpu_figures(out: Path, data_flags: list[str], epochs: int, device: str = "cuda", compiled: bool = True,
                deadline: float | None = None) -> dict:
    """gpu_<name>_images_per_s of each run of gpu_measures on `device` (on CUDA the data on the GPU where it fits,
    the default), see measure_speed; gpu_amp_dtype: what --amp auto ran."""
    results: dict = {"gpu": torch.cuda.get_device_name(0) if device == "cuda" else device, "gpu_errors": {},
                     "gpu_skipped": []}
    for name, script, flags in gpu_measures(resnet50_weights(), compiled):
        summary = measure_speed(out, f"gpu_{name}", [*data_flags, *flags, f"--epochs={epochs}", f"--device={device}"],
                                results, deadline, script)
        if summary is not None:
            results.setdefault("gpu_amp_dtype", summary.get("amp_dtype"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: every measurement at tiny sizes, no target judged")
    parser.add_argument("--data", default=str(IMAGENETTE), help="an image folder in the iNaturalist layout")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"), help="where the benchmark's runs go")
    parser.add_argument("--only", choices=("all", "augmentation"), default="all",
                        help="augmentation: only the augmentation overhead (and on CUDA the GPU figures)")
    args = parser.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    data = Path(args.data)
    found = (data / "train").is_dir()
    per_class = 20 if args.quick else 120
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "torch": torch.__version__, "quick": args.quick}
    if args.only == "all":
        results.update(speed_and_accuracy(data, found, per_class, out, args.quick))
    if not found:
        print(f"{data} not found: the augmentation measurements use digits at 224 px")
    step("aug_default_ratio, aug_trivial_ratio: epochs with and without augmentation")
    results.update(augmentation_overhead(str(data) if found else "digits", 20 if args.quick else 40,
                                         3 if args.quick else 5))
    if torch.cuda.is_available():
        per_class = 40 if args.quick else 150
        flags = [f"--data={data}", f"--max_images_per_class={per_class}"] if found else ["--data=digits"]
        results.update(gpu_figures(out, [*flags, "--input_size=224"], 2 if args.quick else 3))

    if args.quick:
        print("\n--quick is a smoke test: the sizes are too small for the figures to mean anything, so no target is "
              "judged (run without --quick for the measurements)")
    else:
        table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


def table(results: dict) -> None:
    """Each measure beside its target, met or not."""
    targets = {"epoch_speedup_vs_naive": (">=", 5), "train_gflops_ratio": (">=", 0.6), "loader_over_model": (">=", 10),
               "hyperband_epoch_fraction": ("<=", 0.5), "hyperband_best_gap": ("<=", 1.0),
               "aug_default_ratio": (">=", 0.9), "aug_trivial_ratio": (">=", 0.8)}
    print(f"\n{'measure':28} {'value':>10}  target")
    for key, (op, bound) in targets.items():
        if key in results:
            ok = results[key] >= bound if op == ">=" else results[key] <= bound
            print(f"{key:28} {results[key]:10.3f}  {op} {bound}  {'met' if ok else 'NOT met'}")
    if "bf16_acc_gap" in results:
        print(f"{'bf16_acc_gap':28} {results['bf16_acc_gap']:10.4f}  within the fp32 seed spread "
              f"({results['fp32_seed_spread']:.4f})")
    for key in [k for k in results if k.startswith(("gpu_", "aug_loader", "compile_"))]:
        print(f"{key:28} {results[key]}")


if __name__ == "__main__":
    main()
