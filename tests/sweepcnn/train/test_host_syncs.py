"""The training step never waits for the device (sweepcnn.train.totals): on the CPU, the reads of a tensor's value
(aten::_local_scalar_dense: .item(), float(t), `if t`) outside the optimiser's own step (which reads its step
counters, host tensors) do not grow with the number of steps; on CUDA, no synchronising call at all."""
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from sweepcnn.data.augment import Augment
from sweepcnn.train.ema import WeightAverage
from sweepcnn.train.engine import Batches, evaluate, train_one_epoch
from sweepcnn.train.mixing import Mixer
from sweepcnn.train.totals import CHECK_EVERY, Totals

CLASSES = 3


def tiny_model(channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, CLASSES))


def batches(steps: int, channels: int = 1, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(steps)
    return [(torch.randint(0, 256, (8, channels, 12, 12), dtype=torch.uint8, generator=generator).to(device),
             torch.randint(0, CLASSES, (8,), generator=generator).to(device)) for _ in range(steps)]


def training(model: nn.Module, device: torch.device, channels: int = 1, amp=None, augment: Augment | None = None
             ) -> Callable[[list], dict]:
    """Training epochs over a loader, with everything that runs per step: mixup/CutMix, EMA, gradient clipping,
    a per-batch schedule, label smoothing (and `augment`)."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=1000)
    moves = Batches([0.5] * channels, [0.25] * channels, device, True).augmented(augment, torch.Generator())
    scaler, loss_fn = torch.amp.GradScaler(device.type, enabled=amp == torch.float16), nn.CrossEntropyLoss(
        label_smoothing=0.1)
    mix, ema = Mixer(0.2, 1.0, 1.0, 0.5, CLASSES), WeightAverage(model, 0.9, True)
    return lambda loader: train_one_epoch(model, loader, moves, amp, optimizer, scaler, loss_fn, scheduler, "batch",
                                          1.0, "t", None, mix, ema)


def value_reads(steps: int) -> int:
    """_local_scalar_dense calls in a training epoch of `steps` steps, outside Optimizer.step."""
    train = training(tiny_model(), torch.device("cpu"))
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        train(batches(steps))

    def in_optimizer_step(event) -> bool:
        while event is not None:
            if event.name.startswith("Optimizer.step"):
                return True
            event = event.cpu_parent
        return False

    return sum(e.name == "aten::_local_scalar_dense" and not in_optimizer_step(e) for e in trace.events())


def test_a_training_epoch_reads_values_back_a_constant_number_of_times_not_per_step():
    short, long = value_reads(3), value_reads(12)  # both under CHECK_EVERY: one read-back each, at the end
    assert long == short  # before: one per step for the finite-loss check, two per mixed batch (one_hot's checks)


class Diverging(nn.Module):
    """A linear model whose logits turn non-finite from the `at`-th forward on: first a loss of inf (the target
    class at -inf), then nan."""

    def __init__(self, at: int):
        super().__init__()
        self.linear, self.at, self.calls = nn.Linear(144, CLASSES), at, 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = self.linear(images.flatten(1))
        if self.calls == self.at:
            return logits + torch.tensor([-float("inf"), 0.0, 0.0])
        return logits * float("nan") if self.calls > self.at else logits


@pytest.mark.parametrize("steps", [10, CHECK_EVERY + 20])
def test_a_non_finite_loss_stops_training_within_check_every_steps_with_the_first_value(steps):
    model = Diverging(at=4)
    loader = [(images, torch.zeros_like(labels)) for images, labels in batches(steps)]
    moves = Batches([0.5], [0.25], torch.device("cpu"), False)
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    with pytest.raises(FloatingPointError) as error:
        train_one_epoch(model, loader, moves, None, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                        nn.CrossEntropyLoss(), None, "epoch", None, "t")
    assert str(error.value) == "training loss is inf: lower --learning_rate or set --grad_clip"
    assert model.calls == min(steps, CHECK_EVERY)  # caught at the first read-back after step 4


def test_evaluation_reads_back_once_and_keeps_the_logits_in_order():
    model = tiny_model().eval()
    loader = batches(5)
    moves = Batches([0.5], [0.25], torch.device("cpu"), True)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        result = evaluate(model, loader, moves, None, keep_outputs=True)
    assert sum(e.name == "aten::_local_scalar_dense" for e in trace.events()) == 0
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(
        (torch.is_inference_mode_enabled(), output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last))))
    evaluate(model, loader[:1], moves, torch.bfloat16)
    assert seen == [(True, torch.bfloat16, True)]  # inference mode, the run's AMP dtype, channels_last
    with torch.no_grad():
        expected = torch.cat([model(moves(x, y)[0]) for x, y in loader])
    labels = torch.cat([y for _, y in loader])
    assert torch.allclose(result["logits"], expected, atol=1e-6) and not result["logits"].is_inference()
    assert result["acc"] == pytest.approx((expected.argmax(1) == labels).float().mean().item())
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(expected, labels).item(), rel=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16, None])
@pytest.mark.parametrize("augmentations", [[], ["hflip", "rotate", "random_resized_crop", "color_jitter"],
                                           ["trivialaugment"]])
def test_on_cuda_training_and_evaluation_never_synchronise_before_their_read_back(amp, augmentations, monkeypatch):
    cuda = torch.device("cuda")
    model = tiny_model(3).to(cuda).to(memory_format=torch.channels_last)
    train = training(model, cuda, 3, amp, Augment(augmentations, 3) if augmentations else None)
    loader = batches(CHECK_EVERY - 1, channels=3, device="cuda")
    train(loader[:2])  # warm-up: lazy initialisations (optimiser state, loss scale, pinned buffers)
    real_read = Totals.read

    def read_allowed(self):  # the read-back at the end, the one synchronisation allowed
        torch.cuda.set_sync_debug_mode("default")
        return real_read(self)

    monkeypatch.setattr(Totals, "read", read_allowed)
    moves = Batches([0.5] * 3, [0.25] * 3, cuda, True)
    try:
        torch.cuda.set_sync_debug_mode("error")
        train(loader)
        torch.cuda.set_sync_debug_mode("error")
        evaluate(model, loader, moves, amp, tta="flip")
    finally:
        torch.cuda.set_sync_debug_mode("default")
