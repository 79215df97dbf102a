"""Training engine shared by Part A and Part B: the epoch loop, AMP, early stopping, checkpoints, resume, test.

Resume is exact: at the start of every epoch all RNGs (and the loader's and the augmentation's generators) are
reseeded from (seed, epoch), and `last.pt` holds everything else that carries across epochs. A run killed at any
moment restarts from its last completed epoch and, with --deterministic, ends with the same metrics as an
uninterrupted run.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sweepcnn import distributed
from sweepcnn.data.augment import Augment, augmenter
from sweepcnn.data.datasets import Data
from sweepcnn.data.device_data import device_loader
from sweepcnn.data.shards import Shard, TrainShards, split_part
from sweepcnn.errors import UserError
from sweepcnn.runtime import (amp_name, autocast, resolve_amp, resolve_device, rng_state, seed_everything,
                              set_rng_state, signals_deferred)
from sweepcnn.train.checkpoint import load_checkpoint, save_atomic
from sweepcnn.train.ema import WeightAverage, weight_average
from sweepcnn.train.mixing import Mixer, mixer
from sweepcnn.train.optim import (build_optimizer, build_scheduler, restore_optimizer, restore_scaler,
                                  restore_scheduler)
from sweepcnn.train.totals import CHECK_EVERY, Sums, Totals
from sweepcnn.train.tta import tta_logits, tta_mode

AUGMENT_SEED = 2**40  # offsets the augmentation generator's seed from the shuffling one's
MIX_SEED = 2**41  # and the mixup/CutMix generator's
RANK_SEED = 2**42  # offsets each rank's global RNG seed (several ranks)


def gain(monitor: str, value: float, reference: float) -> float:
    """How much better `value` of the metric `monitor` is than `reference` (negative: worse)."""
    return value - reference if monitor == "val_acc" else reference - value


@dataclass
class Progress:
    """What carries from one epoch to the next, besides model/optimiser/scheduler states."""

    epoch: int = 0  # epochs completed
    best_epoch: int = 0
    best_value: float | None = None
    best_metrics: dict = field(default_factory=dict)
    bad_epochs: int = 0
    train_seconds: float = 0.0
    train_images: int = 0  # images seen by the training loops, and their seconds: the run's images/s
    train_loop_seconds: float = 0.0
    stopped_at: dict | None = None  # early stopping ended the run: {"patience": ..., "epochs": ...} then in force
    best_weights: str | None = None  # with --ema: which weights best.pt holds, "ema" or "raw"
    wandb_step: int | None = None  # the W&B step of epoch `epoch`'s history row (None without W&B)

    def early_stopped(self, patience: int | None, epochs: int) -> bool:
        """Whether early stopping ended this run and neither --patience nor --epochs was raised since."""
        return (self.stopped_at is not None and patience is not None and patience <= self.stopped_at["patience"]
                and epochs <= self.stopped_at["epochs"])

    def update(self, metrics: dict, monitor: str, min_delta: float) -> bool:
        value = metrics[monitor]
        improved = self.best_value is None or gain(monitor, value, self.best_value) > min_delta
        if improved:
            self.best_epoch, self.best_value, self.best_metrics, self.bad_epochs = metrics["epoch"], value, metrics, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class Phase:
    """A stretch of training with its own trainable parameters, optimiser and schedule (e.g. fastai's fine_tune:
    the head alone, then more of the network at a lower learning rate). `param_groups()` runs when the phase starts,
    also on resume: it sets requires_grad and returns the optimiser's parameters (tensors, or groups as dicts with
    their own "lr"). `overrides` replace engine config keys (learning_rate, scheduler, ...) in this phase."""

    epochs: int | None  # None: until cfg["epochs"]
    param_groups: Callable[[], list]
    overrides: dict = field(default_factory=dict)


class Batches:
    """Moves uint8 batches to the device and normalises them there (one fused pass, in the model's memory format);
    with an `Augment` (the training batches), augments and normalises them there, drawing from `generator`."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device, channels_last: bool,
                 augment: Augment | None = None, generator: torch.Generator | None = None):
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, device=device).mul(255).view(shape)
        self.std = torch.tensor(std, device=device).mul(255).view(shape)
        self.device, self.channels_last = device, channels_last
        self.augment, self.generator = augment, generator
        self.normalization = (mean, std)

    def augmented(self, augment: Augment | None, generator: torch.Generator) -> Batches:
        """These batches with `augment` (None: as they are) drawing from `generator`."""
        return Batches(*self.normalization, self.device, self.channels_last, augment, generator)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, shard: Shard | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """`shard`: the images are this rank's part of a global batch (augmented as the whole batch would be)."""
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.augment is not None:  # float NCHW: a channels_last model's first convolution converts it in its
            # own (autocast) precision, cheaper than a float32 copy here
            return self.augment.normalized(images, self.generator, self.mean.flatten(), self.std.flatten(),
                                           shard), labels
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images.float().sub_(self.mean).div_(self.std), labels


def evaluate(model: nn.Module, loader, batches: Batches, amp: torch.dtype | None, desc: str = "eval",
             keep_outputs: bool = False, tta: str = "none") -> dict[str, Any]:
    """Mean cross-entropy (unweighted, unsmoothed: comparable across runs) and accuracy; optionally the logits.
    `tta`: the logits are the mean over the test-time views (sweepcnn.train.tta). Waits for the device once."""
    model.eval()
    totals, outputs = Totals(batches.device), []
    with torch.inference_mode():
        for images, labels in tqdm(loader, desc=desc, leave=False, unit="batch", disable=distributed.bars_off()):
            images, labels = batches(images, labels)
            with autocast(batches.device, amp):
                logits = tta_logits(model, images, tta)
            totals.add(F.cross_entropy(logits, labels, reduction="sum"), (logits.argmax(1) == labels).sum(),
                       len(labels))
            if keep_outputs:
                outputs.append(logits)
    sums = totals.read()  # several ranks: over all of them, each having scored its own slice
    result = {"loss": sums.mean_loss(), "acc": sums.accuracy(), "count": int(sums.count)}
    if keep_outputs:  # concatenated outside inference mode: an ordinary tensor, which callers may change in place
        result["logits"] = torch.cat(outputs).cpu() if outputs else torch.empty(0)
    return result


def nonfinite_loss(sums: Sums) -> FloatingPointError:
    return FloatingPointError(f"training loss is {sums.nonfinite}: lower --learning_rate or set --grad_clip")


def train_one_epoch(model, loader, batches: Batches, amp, optimizer, scaler, loss_fn, scheduler, step_on: str,
                    grad_clip: float | None, desc: str, train_mode: Callable[[], None] | None = None,
                    mix: Mixer | None = None, ema: WeightAverage | None = None,
                    shards: TrainShards | None = None) -> dict[str, float]:
    """One pass over the training batches. With `mix`, train_acc is the share of the (unsmoothed) mixed targets'
    mass on the predicted classes: accuracy when nothing is mixed, lam or 1 - lam for a prediction of either image
    of a pair. A step never waits for the device: the sums stay there (sweepcnn.train.totals), read every
    CHECK_EVERY steps (the progress bar; a non-finite loss raises FloatingPointError) and at the end. `shards`: the
    loader yields this rank's shard of each global batch (several ranks)."""
    model.train()
    if train_mode is not None:  # e.g. frozen BatchNorm layers back to eval mode
        train_mode()
    totals = Totals(batches.device)
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", disable=distributed.bars_off())
    for step, (images, labels) in enumerate(bar, 1):
        shard = shards(step - 1) if shards is not None else None
        images, labels = batches(images, labels, shard)
        partners = None
        if shard is not None and shards.partners:  # the shard's own images, then their mixing partners
            images, labels, partners = images[:shard.size], labels[:shard.size], (images[shard.size:],
                                                                                  labels[shard.size:])
        targets = labels
        if mix is not None:
            images, targets = mix(images, labels, partners)
        with autocast(batches.device, amp):
            logits = model(images)
            # an empty shard (a last batch smaller than the ranks) still joins the gradient all-reduce, with zeros
            loss = loss_fn(logits.float(), targets) if len(labels) else logits.float().sum() * 0
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss if shard is None else shard.weighted(loss, shards.world)).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update()
        if scheduler is not None and step_on == "batch":
            scheduler.step()
        predicted = logits.detach().argmax(1)
        correct = targets.gather(1, predicted[:, None]).sum() if mix is not None else (predicted == labels).sum()
        totals.add(loss * len(labels), correct, len(labels))
        distributed.check_stop()
        if step % CHECK_EVERY == 0:
            sums = totals.read()
            if not sums.finite:
                raise nonfinite_loss(sums)
            bar.set_postfix(loss=f"{sums.mean_loss():.4f}", acc=f"{sums.accuracy():.4f}", refresh=False)
    sums = totals.read()
    seconds = time.perf_counter() - start
    if not sums.finite:
        raise nonfinite_loss(sums)
    return {"train_loss": sums.mean_loss(), "train_acc": sums.accuracy(),
            "images_per_sec": sums.count / seconds if seconds > 0 else 0.0}


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def phase_starts(phases: list[Phase]) -> list[int]:
    """The number of epochs completed before each phase begins."""
    starts = [0]
    for phase in phases[:-1]:
        starts.append(starts[-1] + phase.epochs)
    return starts


def default_phases(model: nn.Module) -> list[Phase]:
    """One phase that trains every parameter with requires_grad, with the config's optimiser and schedule."""
    return [Phase(None, lambda: [p for p in model.parameters() if p.requires_grad])]


def place_model(model: nn.Module, cfg: dict, normalization: tuple[list[float], list[float]]
                ) -> tuple[torch.device, torch.dtype | None, Batches]:
    """Move the model to cfg's device and memory format; return (device, autocast dtype or None, batch mover)."""
    device = distributed.device(resolve_device(cfg["device"]))
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    return device, resolve_amp(cfg["amp"], device), Batches(*normalization, device, cfg["channels_last"])


def amp_dtype(cfg: dict) -> str:
    """The precision that cfg's --amp computes in on its --device, by name (summary.json and W&B: amp_dtype)."""
    return amp_name(resolve_amp(cfg["amp"], resolve_device(cfg["device"])))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency cross-entropy weights, n / (K * n_c)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def progress_summary(progress: Progress) -> dict[str, Any]:
    """The summary keys of a run's progress: its best epoch's metrics, epochs run, time and throughput."""
    best = progress.best_metrics
    return {"val_acc": best.get("val_acc"), "val_loss": best.get("val_loss"), "best_epoch": progress.best_epoch,
            "epochs_run": progress.epoch, "train_seconds": progress.train_seconds,
            "images_per_sec": progress.train_images / progress.train_loop_seconds
            if progress.train_loop_seconds > 0 else None,
            **({"best_weights": progress.best_weights} if progress.best_weights else {})}


def validate(net: nn.Module, ema: WeightAverage | None, loader, batches: Batches, amp, tta: str, monitor: str
             ) -> tuple[dict[str, float], nn.Module]:
    """val_loss and val_acc of the model, and with `ema` of both (suffixes _raw and _ema) with the better one's
    as val_loss and val_acc; and the module that scored them."""
    raw = evaluate(net, loader, batches, amp, desc="validate", tta=tta)
    metrics = {"val_loss": raw["loss"], "val_acc": raw["acc"]}
    if ema is None:
        return metrics, net
    averaged = evaluate(ema.module, loader, batches, amp, desc="validate EMA", tta=tta)
    metrics.update(val_loss_raw=raw["loss"], val_acc_raw=raw["acc"], val_loss_ema=averaged["loss"],
                   val_acc_ema=averaged["acc"])
    key = monitor.removeprefix("val_")
    if gain(monitor, averaged[key], raw[key]) > 0:
        metrics.update(val_loss=averaged["loss"], val_acc=averaged["acc"])
        return metrics, ema.module
    return metrics, net


def saved_progress(run_dir: Path) -> Progress | None:
    """The Progress of the last completed epoch saved in run_dir/last.pt (None before the first one)."""
    path = run_dir / "last.pt"
    return Progress(**load_checkpoint(path)["progress"]) if path.is_file() else None


def saved_summary(run_dir: Path) -> dict[str, Any]:
    """progress_summary of the last completed epoch saved in run_dir/last.pt ({} before the first one)."""
    progress = saved_progress(run_dir)
    return progress_summary(progress) if progress is not None else {}


def fit(model: nn.Module, data: Data, cfg: dict, run_dir: Path, log: Callable[[dict, int], int | None],
        normalization: tuple[list[float], list[float]], resume: bool = False, extra: dict | None = None,
        phases: list[Phase] | None = None, train_mode: Callable[[], None] | None = None,
        test: bool = False) -> dict[str, Any]:
    """Train with validation every epoch, keep the best checkpoint, and (`test`) evaluate it on the test
    split. `log(metrics, epoch)` receives each epoch's metrics and returns their W&B step (None without W&B), kept
    in last.pt. Returns the run summary.

    `phases` (default: one phase, all trainable parameters) split the epochs; each phase starts with a fresh
    optimiser and schedule. `train_mode()` runs after `model.train()` at the start of every training epoch."""
    device, amp, batches = place_model(model, cfg, normalization)
    model = distributed.prepare_model(model, cfg, device)  # --sync_bn: the same parameters, already in place
    # The compiled wrapper shares the parameters; checkpoints keep saving `model`, whose keys have no prefix.
    net = torch.compile(model) if cfg["compile"] else model
    train_set, generator, augment_generator = data.train, torch.Generator(), torch.Generator()
    train_batches = batches.augmented(augmenter(cfg, train_set.pixels.shape[1]), augment_generator)
    mix, tta = mixer(cfg, len(data.classes)), tta_mode(cfg)
    rank, world = distributed.rank(), distributed.world()
    shards = TrainShards(len(train_set), cfg["batch_size"], rank, world, mix is not None) if world > 1 else None
    train_loader = device_loader(train_set, cfg["batch_size"], True, cfg, generator, device, shards,
                                 distributed.smallest_last_batch(cfg))
    eval_batch = 2 * cfg["batch_size"] // world  # per rank: each scores its own slice of a split
    val_loader = device_loader(split_part(data.val, rank, world), eval_batch, False, cfg, torch.Generator(), device)

    def trainer() -> nn.Module:
        """What the training steps run: in DDP (several ranks) over the phase's trainable parameters."""
        if world == 1:
            return net
        wrapped = distributed.wrap(model, cfg, device)
        return torch.compile(wrapped) if cfg["compile"] else wrapped

    phases = phases or default_phases(model)
    starts = phase_starts(phases)

    def phase_at(epoch: int) -> int:
        return max(i for i, start in enumerate(starts) if start < epoch)

    def start_phase(index: int):
        end = starts[index + 1] if index + 1 < len(phases) else cfg["epochs"]
        phase_cfg = {**cfg, **phases[index].overrides, "epochs": end - starts[index]}
        optimizer = build_optimizer(phases[index].param_groups(), phase_cfg, fused=device.type == "cuda")
        return (optimizer, *build_scheduler(optimizer, phase_cfg, len(train_loader)))

    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    weights = class_weights(data.train.labels, len(data.classes)).to(device) if cfg["class_weights"] == "auto" else None
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg["label_smoothing"])

    progress = Progress()
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    # several ranks: rank 0 reads it (on the CPU, as its tensors then travel to every rank) and sends it to all
    state = distributed.on_main(lambda: load_checkpoint(last_path, device if world == 1 else "cpu")
                                if resume and last_path.exists() else None)
    if state is not None:
        model.load_state_dict(state["model"])
        progress = Progress(**state["progress"])
    ema = weight_average(model, cfg)
    if ema is not None and state is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    phase = phase_at(progress.epoch + 1)
    optimizer, scheduler, step_on = start_phase(phase)
    train_net = trainer()
    if state is not None:
        # At a phase boundary the saved optimiser belongs to the finished phase: the new one starts fresh.
        if state.get("phase", 0) == phase:
            restore_optimizer(optimizer, state["optimizer"])
            # re-planned if --epochs changed the phase's length (see sweepcnn.train.optim)
            scheduler = restore_scheduler(scheduler, state["scheduler"])
        restore_scaler(scaler, state["scaler"])
        set_rng_state(state["rng"])

    epochs = cfg["epochs"]
    first = progress.epoch + 1
    if progress.early_stopped(cfg["patience"], epochs):
        tqdm.write(f"early stopping ended this run at epoch {progress.epoch}: nothing more to train (raise --patience "
                   "or --epochs to train on)")
        first = epochs + 1
    for epoch in tqdm(range(first, epochs + 1), desc="epochs", unit="epoch",
                      initial=progress.epoch, total=epochs, disable=distributed.bars_off()):
        if phase_at(epoch) != phase:
            phase = phase_at(epoch)
            optimizer, scheduler, step_on = start_phase(phase)
            train_net = trainer()
            tqdm.write(f"phase {phase + 1}/{len(phases)} from epoch {epoch}")
        seed_everything(epoch_seed(cfg["seed"], epoch) + RANK_SEED * rank)  # e.g. dropout: each rank its own
        generator.manual_seed(epoch_seed(cfg["seed"], epoch))
        augment_generator.manual_seed(AUGMENT_SEED + epoch_seed(cfg["seed"], epoch))
        if mix is not None:
            mix.reseed(MIX_SEED + epoch_seed(cfg["seed"], epoch))
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[-1]["lr"]
        train = train_one_epoch(train_net, train_loader, train_batches, amp, optimizer, scaler, loss_fn, scheduler,
                                step_on, cfg["grad_clip"], f"epoch {epoch}/{epochs}", train_mode, mix, ema, shards)
        val, scored = validate(net, ema, val_loader, batches, amp, tta, cfg["monitor"])
        metrics = {"epoch": epoch, **train, **val, "learning_rate": lr}
        if scheduler is not None and step_on == "epoch":
            scheduler.step()
        elif scheduler is not None and step_on == "plateau":
            scheduler.step(metrics[cfg["monitor"]])
        metrics["epoch_seconds"] = time.perf_counter() - epoch_start
        progress.train_seconds += metrics["epoch_seconds"]
        if train["images_per_sec"] > 0:
            progress.train_images += len(train_set)
            progress.train_loop_seconds += len(train_set) / train["images_per_sec"]
        if progress.update(metrics, cfg["monitor"], cfg["min_delta"]):
            weights = "ema" if ema is not None and scored is ema.module else "raw"
            progress.best_weights = weights if ema is not None else None
            best_model = ema.module if weights == "ema" else model
            if distributed.is_main():  # rank 0 alone writes
                save_atomic({"model": best_model.state_dict(), "epoch": epoch, "metrics": metrics,
                             "classes": data.classes, "weights": weights,
                             "normalization": {"mean": normalization[0], "std": normalization[1]}, "config": cfg},
                            best_path)
        progress.epoch = epoch
        stop = cfg["patience"] is not None and progress.bad_epochs >= cfg["patience"]
        progress.stopped_at = {"patience": cfg["patience"], "epochs": epochs} if stop else None
        # One step for a stop signal: an epoch is logged only with the last.pt that holds it, so a resume never
        # trains and logs an epoch twice.
        with signals_deferred():
            progress.wandb_step = log(metrics, epoch)
            if distributed.is_main():  # rank 0 alone writes
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict() if scheduler is not None else None,
                             "scaler": scaler.state_dict(), "progress": asdict(progress), "rng": rng_state(),
                             "phase": phase, **({"ema": ema.state_dict()} if ema is not None else {})}, last_path)
        ema_note = f" (EMA {val['val_acc_ema']:.4f}, raw {val['val_acc_raw']:.4f})" if ema is not None else ""
        tqdm.write(f"epoch {epoch}/{epochs}  train_loss {train['train_loss']:.4f}  train_acc {train['train_acc']:.4f}"
                   f"  val_loss {val['val_loss']:.4f}  val_acc {val['val_acc']:.4f}{ema_note}  lr {lr:.2e}"
                   f"  {train['images_per_sec']:.0f} img/s  {metrics['epoch_seconds']:.1f}s")
        if stop:
            tqdm.write(f"early stopping: no {cfg['monitor']} improvement for {cfg['patience']} epochs")
            break

    summary = {**progress_summary(progress), **(extra or {}), "amp_dtype": amp_name(amp),
               "tricks": {"mixup": mix.mixup if mix else 0.0, "cutmix": mix.cutmix if mix else 0.0,
                          "ema_decay": ema.decay if ema else None, "tta": tta}}
    if test:
        if not distributed.on_main(best_path.exists):
            raise UserError(f"--test: no best checkpoint in {run_dir}: train at least one epoch first")
        if distributed.is_main():
            model.load_state_dict(load_checkpoint(best_path, device)["model"])
        distributed.broadcast_module(model)
        test_loader = device_loader(split_part(data.test, rank, world), eval_batch, False, cfg, torch.Generator(),
                                    device)
        scores = evaluate(net, test_loader, batches, amp, desc="test", tta=tta)
        summary.update(test_acc=scores["acc"], test_loss=scores["loss"])
        if tta != "none":  # what the test-time augmentation gave
            plain = evaluate(net, test_loader, batches, amp, desc="test without TTA")
            summary.update(test_acc_no_tta=plain["acc"], test_loss_no_tta=plain["loss"])
        tqdm.write(f"test (best epoch {progress.best_epoch}): loss {scores['loss']:.4f}  acc {scores['acc']:.4f}")
    return summary
