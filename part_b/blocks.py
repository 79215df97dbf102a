"""Explicit block lists per architecture family, and the freezing strategies that count in them.

A model's blocks run from the input to the output; together with the head (the final classification layer, replaced
for the dataset's classes) they hold every parameter exactly once, which `check_layout` verifies for each model built.

Strategies, for a model with n blocks:
    first_k          freeze blocks 1..k                     (1 <= k <= n)
    all_except_k     freeze every block but the last k       (1 <= k <= n)
    all_except_last  freeze every block: train the head only
    none             train everything
The head is always trainable. BatchNorm layers whose parameters are all frozen are kept in eval mode during
training (their running statistics stay the pretrained ones) unless asked otherwise.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from sweepcnn.errors import UserError


@dataclass(frozen=True)
class Block:
    name: str
    paths: tuple[str, ...]  # sub-module or parameter paths (e.g. ViT's class_token is a bare parameter)


@dataclass(frozen=True)
class Layout:
    family: str
    blocks: tuple[Block, ...]  # input to output
    head: str  # the final classification layer
    first_conv: str | None  # what grayscale input adapts; None: not supported


def _one(name: str, *paths: str) -> Block:
    return Block(name, paths or (name,))


def _numbered(prefix: str, path: str, indices) -> list[Block]:
    return [Block(f"{prefix}{i}", (f"{path}.{j}",)) for i, j in indices]


def _resnet(model: nn.Module) -> Layout:  # resnet*, resnext*, wide_resnet*
    blocks = (_one("stem", "conv1", "bn1"), *(_one(f"layer{i}") for i in range(1, 5)))
    return Layout("resnet", blocks, "fc", "conv1")


def _vit(model: nn.Module) -> Layout:
    layers = [_one(f"encoder_layer_{i}", f"encoder.layers.encoder_layer_{i}") for i in range(len(model.encoder.layers))]
    blocks = (_one("embedding", "conv_proj", "class_token", "encoder.pos_embedding"), *layers, _one("encoder.ln"))
    return Layout("vit", blocks, "heads.head", "conv_proj")


def _efficientnet(model: nn.Module) -> Layout:  # torchvision's efficientnet_b0..b7, efficientnet_v2_s/m/l
    top = len(model.features) - 1
    blocks = (_one("stem", "features.0"), *_numbered("stage", "features", ((i, i) for i in range(1, top))),
              _one("top", f"features.{top}"))
    return Layout("efficientnet", blocks, "classifier.1", "features.0.0")


# MBConv blocks per stage of EfficientNet-Lite0 (efficientnet_lite_builder: r1, r2, r2, r3, r3, r4, r1).
LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)


def _efficientnet_lite(model: nn.Module) -> Layout:
    blocks, first = [_one("stem", "_conv_stem", "_bn0")], 0
    for stage, count in enumerate(LITE0_STAGES, 1):
        blocks.append(Block(f"stage{stage}", tuple(f"_blocks.{i}" for i in range(first, first + count))))
        first += count
    blocks.append(_one("top", "_conv_head", "_bn1"))
    return Layout("efficientnet_lite", tuple(blocks), "_fc", "_conv_stem")


def _stages_with_downsampling() -> list[Block]:
    """ConvNeXt and Swin: features = [stem, stage1, down2, stage2, down3, stage3, down4, stage4]; each stage after
    the first starts with its downsampling layer."""
    return [_one("stage1", "features.1"),
            *(Block(f"stage{s}", (f"features.{2 * s - 2}", f"features.{2 * s - 1}")) for s in range(2, 5))]


def _convnext(model: nn.Module) -> Layout:
    blocks = (_one("stem", "features.0"), *_stages_with_downsampling(), _one("norm", "classifier.0"))
    return Layout("convnext", blocks, "classifier.2", "features.0.0")


def _swin(model: nn.Module) -> Layout:  # swin_t/s/b and swin_v2_t/s/b
    blocks = (_one("patch_embed", "features.0"), *_stages_with_downsampling(), _one("norm"))
    return Layout("swin", blocks, "head", "features.0.0")


def _mobilenet_v2(model: nn.Module) -> Layout:
    top = len(model.features) - 1
    blocks = (_one("stem", "features.0"), *_numbered("block", "features", ((i, i) for i in range(1, top))),
              _one("top", f"features.{top}"))
    return Layout("mobilenet_v2", blocks, "classifier.1", "features.0.0")


def _mobilenet_v3(model: nn.Module) -> Layout:
    top = len(model.features) - 1
    blocks = (_one("stem", "features.0"), *_numbered("block", "features", ((i, i) for i in range(1, top))),
              _one("top", f"features.{top}"), _one("pre_logits", "classifier.0"))
    return Layout("mobilenet_v3", blocks, "classifier.3", "features.0.0")


def _densenet(model: nn.Module) -> Layout:
    middle = []
    for i in range(1, 5):
        middle.append(_one(f"denseblock{i}", f"features.denseblock{i}"))
        if i < 4:
            middle.append(_one(f"transition{i}", f"features.transition{i}"))
    blocks = (_one("stem", "features.conv0", "features.norm0"), *middle, _one("norm5", "features.norm5"))
    return Layout("densenet", blocks, "classifier", "features.conv0")


def _regnet(model: nn.Module) -> Layout:
    blocks = (_one("stem"), *(_one(f"block{i}", f"trunk_output.block{i}") for i in range(1, 5)))
    return Layout("regnet", blocks, "fc", "stem.0")


def _vgg(model: nn.Module) -> Layout:
    """Five conv stages (convolutions and batch norms between max-pools), then fc6 and fc7."""
    stages, current = [], []
    for name, module in model.features.named_children():
        if isinstance(module, nn.MaxPool2d):
            stages.append(current)
            current = []
        elif isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            current.append(f"features.{name}")
    blocks = (*(Block(f"stage{i}", tuple(paths)) for i, paths in enumerate(stages, 1)),
              _one("fc6", "classifier.0"), _one("fc7", "classifier.3"))
    return Layout("vgg", blocks, "classifier.6", "features.0")


def _alexnet(model: nn.Module) -> Layout:
    blocks = (*_numbered("conv", "features", enumerate((0, 3, 6, 8, 10), 1)),
              _one("fc6", "classifier.1"), _one("fc7", "classifier.4"))
    return Layout("alexnet", blocks, "classifier.6", "features.0")


def _squeezenet(model: nn.Module) -> Layout:  # the head is a 1x1 convolution
    fires = [name for name, m in model.features.named_children() if type(m).__name__ == "Fire"]
    blocks = (_one("conv1", "features.0"), *_numbered("fire", "features", zip(range(2, 10), fires)))
    return Layout("squeezenet", blocks, "classifier.1", "features.0")


def _shufflenet(model: nn.Module) -> Layout:
    blocks = tuple(_one(name) for name in ("conv1", "stage2", "stage3", "stage4", "conv5"))
    return Layout("shufflenet_v2", blocks, "fc", "conv1.0")


def _mnasnet(model: nn.Module) -> Layout:
    blocks = (Block("stem", tuple(f"layers.{i}" for i in range(8))),
              *_numbered("stack", "layers", zip(range(1, 7), range(8, 14))), _one("top", "layers.14", "layers.15"))
    return Layout("mnasnet", blocks, "classifier.1", "layers.0")


def _googlenet(model: nn.Module) -> Layout:
    # The pretrained weights expect transform_input (three channels): no grayscale adaptation.
    names = ("conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
             "inception4d", "inception4e", "inception5a", "inception5b")
    return Layout("googlenet", tuple(_one(n) for n in names), "fc", None)


def _inception_v3(model: nn.Module) -> Layout:
    names = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b",
             "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
             "Mixed_7b", "Mixed_7c")
    return Layout("inception_v3", tuple(_one(n) for n in names), "fc", None)


def _maxvit(model: nn.Module) -> Layout:
    blocks = (_one("stem"), *_numbered("block", "blocks", ((i + 1, i) for i in range(len(model.blocks)))),
              _one("pre_logits", "classifier.2", "classifier.3"))
    return Layout("maxvit", blocks, "classifier.5", "stem.0.0")


# (name prefixes, layout): the first match wins.
FAMILIES: tuple[tuple[tuple[str, ...], Callable[[nn.Module], Layout]], ...] = (
    (("resnet", "resnext", "wide_resnet"), _resnet),
    (("vit_",), _vit),
    (("efficientnet_lite",), _efficientnet_lite),
    (("efficientnet_b", "efficientnet_v2_"), _efficientnet),
    (("convnext_",), _convnext),
    (("swin_",), _swin),
    (("mobilenet_v2",), _mobilenet_v2),
    (("mobilenet_v3_",), _mobilenet_v3),
    (("densenet",), _densenet),
    (("regnet_",), _regnet),
    (("vgg",), _vgg),
    (("alexnet",), _alexnet),
    (("squeezenet",), _squeezenet),
    (("shufflenet_v2_",), _shufflenet),
    (("mnasnet",), _mnasnet),
    (("googlenet",), _googlenet),
    (("inception_v3",), _inception_v3),
    (("maxvit_",), _maxvit),
)


def layout_for(name: str, model: nn.Module) -> Layout:
    for prefixes, layout in FAMILIES:
        if name.startswith(prefixes):
            return layout(model)
    families = ", ".join(p for prefixes, _ in FAMILIES for p in prefixes)
    raise UserError(f"--model {name}: no block list for this architecture, so the freezing strategies cannot be "
                    f"applied; models whose names start with one of these have one: {families}")


def block_parameters(model: nn.Module, block: Block) -> Iterator[nn.Parameter]:
    for path in block.paths:
        try:
            yield from model.get_submodule(path).parameters()
        except AttributeError:
            yield model.get_parameter(path)


def check_layout(model: nn.Module, layout: Layout) -> None:
    """Every parameter in exactly one block or the head (a torchvision whose models changed would break this)."""
    seen: dict[int, str] = {}
    owners = [(b.name, list(block_parameters(model, b))) for b in layout.blocks]
    owners.append(("head", list(model.get_submodule(layout.head).parameters())))
    for owner, params in owners:
        for p in params:
            if id(p) in seen:
                raise RuntimeError(f"{layout.family} block list: a parameter is in both {seen[id(p)]} and {owner}")
            seen[id(p)] = owner
    missing = [name for name, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise RuntimeError(f"{layout.family} block list does not cover {missing[:3]} (this torchvision version "
                           "builds the model differently)")


def check_k(strategy: str, k: int | None, layout: Layout, model_name: str) -> None:
    if strategy not in ("first_k", "all_except_k"):
        return
    n = len(layout.blocks)
    names = ", ".join(b.name for b in layout.blocks)
    if k is None:
        raise UserError(f"--strategy {strategy} needs --k: a number of blocks from 1 to {n} ({model_name}: {names})")
    if not 1 <= k <= n:
        raise UserError(f"--k: {k} is out of range for {model_name}, which has {n} blocks ({names}): choose 1 to {n}")


def frozen_count(strategy: str, k: int | None, n: int) -> int:
    """How many leading blocks the strategy freezes."""
    return {"first_k": lambda: k, "all_except_k": lambda: n - k, "all_except_last": lambda: n,
            "none": lambda: 0}[strategy]()


def freeze(model: nn.Module, layout: Layout, frozen: int) -> None:
    """Freeze the first `frozen` blocks; everything else (the head included) trains."""
    for p in model.parameters():
        p.requires_grad_(True)
    for block in layout.blocks[:frozen]:
        for p in block_parameters(model, block):
            p.requires_grad_(False)


def param_groups(model: nn.Module, layout: Layout, lr: float, backbone_lr_mult: float, layer_decay: float
                 ) -> list[dict]:
    """Optimiser groups of the trainable parameters: one per trainable block, the head last.

    The head trains at `lr`; the top block at lr * backbone_lr_mult, and each block below it `layer_decay` times
    the one above (layer-wise LR decay; 1 turns it off)."""
    n = len(layout.blocks)
    groups = []
    for i, block in enumerate(layout.blocks):
        params = [p for p in block_parameters(model, block) if p.requires_grad]
        if params:
            groups.append({"name": block.name, "params": params,
                           "lr": lr * backbone_lr_mult * layer_decay ** (n - 1 - i)})
    groups.append({"name": "head", "params": list(model.get_submodule(layout.head).parameters()), "lr": lr})
    return groups


def is_frozen_batchnorm(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and bool(params) and \
        not any(p.requires_grad for p in params)


def trains_batchnorm(model: nn.Module, layout: Layout, frozen: int, train_frozen_bn: bool) -> bool:
    """Whether a BatchNorm layer is in training mode (uses batch statistics) with the first `frozen` blocks frozen,
    as frozen_batchnorm_eval leaves them (or all of them, with `train_frozen_bn`)."""
    freeze(model, layout, frozen)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (train_frozen_bn or not is_frozen_batchnorm(m))
               for m in model.modules())


def frozen_batchnorm_eval(model: nn.Module) -> Callable[[], None]:
    """For sweepcnn.train.engine.fit's train_mode: after model.train(), BatchNorm layers with frozen parameters go
    back to eval mode, so their running statistics stay as loaded. Decided at each call, so it follows phase
    changes."""
    def set_modes() -> None:
        for module in model.modules():
            if is_frozen_batchnorm(module):
                module.eval()
    return set_modes
