"""The training-recipe ablation of docs/accuracy.md: the assignment-sized CNN (5 blocks doubling from 32 filters, GELU,
512 dense) on imagenette, 10 epochs at 128 px with the default augmentation, two seeds. Each variant is a
part_a/train.py run in <out_dir>/<variant>-s<seed>: finished runs are reused (their config must match), unfinished
ones resumed, so the command can be stopped and rerun. Test-time augmentation is ablated on the trained runs'
best.pt (it changes no training). Prints a markdown table and writes it, with every run's figures, as JSON.

    python bench/ablation.py                                  # 8 runs, 9-12 min each on 2 CPU cores
    python bench/ablation.py --variants defaults,recipe --seeds 0
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from part_a.train import OPTIONS
from sweepcnn.config import parse_args
from sweepcnn.report.predictions import predict
from sweepcnn.report.runs import load_run_data, load_run_model
from sweepcnn.train.engine import place_model
from sweepcnn.tracking import read_history
from sweepcnn.train.run_dir import RUNTIME_KEYS

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "part_a" / "recipes" / "photos.yaml"
ARCH = ["--filter_counts_strategy=doubling", "--base_filters=32", "--activation=gelu", "--dense_neurons=512",
        "--input_size=128", "--epochs=10", "--augmentation=true"]
SGD = ["--optimizer=sgd", "--nesterov=true", "--learning_rate=0.05", "--scheduler=onecycle", "--weight_decay=5e-4",
       "--label_smoothing=0.1"]
# name: (what it is, flags on top of ARCH)
VARIANTS = {
    "defaults": ("train.py's defaults: Adam 1e-3, cosine", []),
    "sgd": ("SGD Nesterov 0.05, onecycle, wd 5e-4, label smoothing 0.1", SGD),
    "recipe": (f"--config {RECIPE.relative_to(ROOT)}: sgd + EMA + TTA flip_crops", [f"--config={RECIPE}"]),
    "recipe_mix": ("recipe + mixup 0.1 / CutMix 1.0", [f"--config={RECIPE}", "--mixup=0.1", "--cutmix=1.0"]),
}
TTA_MODES = ("none", "flip", "flip_crops")
EARLY_EPOCH = 3


def same(key: str, saved, wanted) -> bool:
    """Whether a saved config value is the wanted one (a data folder: the same folder, however spelled)."""
    if key == "data" and isinstance(saved, str) and isinstance(wanted, str):
        return (ROOT / saved).resolve() == (ROOT / wanted).resolve()
    return saved == wanted


def train_run(run_dir: Path, flags: list[str]) -> dict:
    """The run's summary: trained now, resumed, or (finished, same config) read as it is."""
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    if config_path.exists():
        saved = yaml.safe_load(config_path.read_text())
        wanted, _ = parse_args(flags, OPTIONS, "bench/ablation.py", "")
        differ = {k: (saved.get(k, OPTIONS[k].default), v) for k, v in wanted.items()
                  if k not in RUNTIME_KEYS - {"epochs"} and not same(k, saved.get(k, OPTIONS[k].default), v)}
        if differ:
            sys.exit(f"error: {run_dir} was trained with other flags {differ} (run: saved, wanted): move it away")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("status") == "finished":
        return summary
    resume = ["--resume"] if config_path.exists() else []
    command = [sys.executable, str(ROOT / "part_a" / "train.py"), *flags, f"--out_dir={run_dir.parent}",
               f"--run_name={run_dir.name}", "--test", "--report=false", "--wandb_mode=disabled", *resume]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(summary_path.read_text())


def tta_accuracies(run_dir: Path) -> dict[str, float]:
    """Test accuracy of the run's best.pt with each test-time augmentation."""
    spec, cfg, classes, normalization = load_run_model(run_dir)
    data = load_run_data(run_dir, cfg, classes)
    _, amp, batches = place_model(spec.model, cfg, normalization)
    accuracies = {}
    for mode in TTA_MODES:
        results = predict(spec.model, data.test, batches, amp, 2 * cfg["batch_size"], mode)
        accuracies[mode] = (results.preds == results.labels).sum().item() / len(results.labels)
    return accuracies


def without_ema(run_dir: Path, summary: dict) -> float | None:
    """The test accuracy the run would have had without --ema, where its history proves it: EMA changes no training
    step, so if best.pt holds the raw weights of the epoch with the best raw val_acc, a run without EMA keeps those
    same weights. None where the EMA weights were selected (then only a run with --ema=false tells)."""
    rows = read_history(run_dir)
    raw = [row["val_acc_raw"] for row in rows]
    first_best = raw.index(max(raw)) + 1  # the engine keeps the first epoch of the best value
    return summary["test_acc"] if summary.get("best_weights") == "raw" and summary["best_epoch"] == first_best else None


def row(name: str, label: str, accs: list[float], done: list[dict], early_key: str = "val_acc") -> str:
    """A table row: `early_key` names the validation metric whose value after epoch 3 (hyperband's first check in
    the sweep YAMLs) is shown."""
    per_seed = " / ".join(f"{a:.3f}" for a in accs)
    val = statistics.mean(r["summary"]["val_acc"] for r in done)
    early = statistics.mean(r["history"][EARLY_EPOCH - 1][early_key] for r in done)
    epoch_seconds = " / ".join(f"{statistics.median(h['epoch_seconds'] for h in r['history']):.0f}" for r in done)
    weights = " / ".join(r["summary"].get("best_weights", "raw") for r in done)
    return (f"| {name} | {label} | {early:.3f} | {val:.3f} | {per_seed} | **{statistics.mean(accs):.3f}** | "
            f"{weights} | {epoch_seconds} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imagenette"))
    parser.add_argument("--out_dir", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "ablation-cpu-2core.json")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict = {}
    for seed in seeds:  # seed-major: a stopped command leaves whole comparisons
        for name in names:
            run_dir = args.out_dir / f"{name}-s{seed}"
            summary = train_run(run_dir, [f"--data={args.data}", *ARCH, *VARIANTS[name][1], f"--seed={seed}"])
            tta = summary.get("tricks", {}).get("tta", "none") != "none"
            ema = summary.get("tricks", {}).get("ema_decay") is not None
            runs[f"{name}-s{seed}"] = {"summary": summary, "history": read_history(run_dir),
                                       "tta": tta_accuracies(run_dir) if tta else None,
                                       "without_ema": without_ema(run_dir, summary) if ema else None}
    lines = [f"| variant | what changes | val acc after epoch {EARLY_EPOCH} | best val acc | test acc per seed | "
             "test acc (mean) | best.pt weights | median epoch s |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        done = [runs[f"{name}-s{seed}"] for seed in seeds]
        lines.append(row(name, VARIANTS[name][0], [r["summary"]["test_acc"] for r in done], done))
        if all(r["tta"] for r in done):
            for mode in TTA_MODES:
                lines.append(row(f"{name}, TTA {mode}", "the same runs' best.pt, test split only",
                                 [r["tta"][mode] for r in done], done))
        if all(r["without_ema"] is not None for r in done):
            lines.append(row(f"{name}, EMA off", "the same runs: best.pt holds raw weights that a run without "
                             "EMA keeps too", [r["without_ema"] for r in done], done, "val_acc_raw"))
    table = "\n".join(lines)
    print(table)
    args.json.write_text(json.dumps({"command": "python bench/ablation.py " + " ".join(sys.argv[1:]),
                                     "table": table, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
