"""The Part A CNN (part_a/model.py): config validation, structure, shapes and a training step."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from part_a.cnn_config import ACTIVATIONS, MODEL_OPTIONS, resolve_cnn_config
from part_a.model import build_cnn, first_conv, last_conv

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

SMALL = {"base_filters": 4, "dense_neurons": 16, "input_size": 32}


def test_model_options_keys():
    assert list(MODEL_OPTIONS) == ["filter_counts", "base_filters", "filter_counts_strategy", "max_filters",
                                   "filter_sizes", "filter_size", "activation", "dense_neurons", "dropout_rate",
                                   "batch_norm", "input_size", "in_channels", "num_classes"]


def test_resolve_defaults_and_strategies():
    cfg = resolve_cnn_config({})
    assert cfg["filter_counts"] == [32] * 5 and cfg["filter_sizes"] == [3] * 5
    assert {k: cfg[k] for k in MODEL_OPTIONS if k not in ("filter_counts", "filter_sizes")} == \
        {k: o.default for k, o in MODEL_OPTIONS.items() if k not in ("filter_counts", "filter_sizes")}
    assert resolve_cnn_config({"base_filters": 8, "filter_counts_strategy": "doubling"})["filter_counts"] == \
        [8, 16, 32, 64, 128]
    assert resolve_cnn_config({"base_filters": 8, "filter_counts_strategy": "halving"})["filter_counts"] == \
        [128, 64, 32, 16, 8]
    assert resolve_cnn_config({"base_filters": 64, "filter_counts_strategy": "halving", "max_filters": 128}
                              )["filter_counts"] == [128, 128, 128, 128, 64]
    explicit = resolve_cnn_config({"filter_counts": (5, 6, 7, 8, 9), "base_filters": 2, "filter_sizes": "1,2,3,4,5",
                                   "filter_size": 7})
    assert explicit["filter_counts"] == [5, 6, 7, 8, 9] and explicit["filter_sizes"] == [1, 2, 3, 4, 5]
    assert resolve_cnn_config(explicit) == explicit


@pytest.mark.parametrize("config, key", [
    ({"activation": "foo"}, "activation"),
    ({"filter_counts": [8, 8, 8, 8]}, "filter_counts"),
    ({"filter_sizes": [3, 3, 3, 3, 3, 3]}, "filter_sizes"),
    ({"filter_counts": [8, 8, 0, 8, 8]}, "filter_counts"),
    ({"dropout_rate": 1.0}, "dropout_rate"),
    ({"dropout_rate": -0.1}, "dropout_rate"),
    ({"in_channels": 2}, "in_channels"),
    ({"base_filters": 0}, "base_filters"),
    ({"filter_size": 0}, "filter_size"),
    ({"filter_counts_strategy": "tripling"}, "filter_counts_strategy"),
    ({"num_classes": 1}, "num_classes"),
    ({"dense_neurons": 2.5}, "dense_neurons"),
    ({"batch_norm": "maybe"}, "batch_norm"),
    ({"input_size": 31}, "input_size"),
])
def test_bad_values_name_the_key(config, key):
    with pytest.raises(ValueError, match=key):
        resolve_cnn_config(config)
    with pytest.raises(ValueError, match=key):
        build_cnn(config)


def test_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match="learning_rate") as info:
        build_cnn({"learning_rate": 1e-3})
    assert "dense_neurons" in str(info.value)


def test_too_small_input_names_32():
    with pytest.raises(ValueError, match="32"):
        resolve_cnn_config({"input_size": 31})


@pytest.mark.parametrize("size", [32, 33, 47, 64, 65, 97, 101])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5, 6])
def test_output_and_block_shapes(size, kernel):
    cfg = {**SMALL, "input_size": size, "filter_size": kernel, "num_classes": 7, "in_channels": 1}
    model = build_cnn(cfg).eval()
    sizes = []
    for block in model.features:
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])))
    convs = []
    for block in model.features:
        block.conv.register_forward_hook(lambda m, i, o: convs.append((tuple(i[0].shape[2:]), tuple(o.shape[2:]))))
    with torch.no_grad():
        out = model(torch.randn(3, 1, size, size))
    assert out.shape == (3, 7)
    assert sizes == [(size // 2**i, size // 2**i) for i in range(1, 6)]
    assert all(a == b for a, b in convs)  # 'same' padding keeps the size for odd and even kernels


def test_mixed_kernels_and_filter_counts():
    model = build_cnn({"filter_counts": [3, 5, 7, 2, 4], "filter_sizes": [2, 5, 4, 1, 6], "input_size": 40,
                       "dense_neurons": 8})
    assert [b.conv.out_channels for b in model.features] == [3, 5, 7, 2, 4]
    assert [b.conv.kernel_size for b in model.features] == [(2, 2), (5, 5), (4, 4), (1, 1), (6, 6)]
    assert model.classifier.fc.in_features == 4 * 1 * 1
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 10)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_trains_one_step(activation):
    torch.manual_seed(0)
    model = build_cnn({**SMALL, "activation": activation, "dropout_rate": 0.0})
    assert sum(isinstance(m, getattr(nn, ACTIVATIONS[activation])) for m in model.modules()) == 6
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all()
                                        for p in model.parameters())
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_batch_norm_switches_conv_bias():
    with_bn, without = build_cnn({**SMALL, "batch_norm": True}), build_cnn({**SMALL, "batch_norm": False})
    assert all(b.conv.bias is None and isinstance(b.bn, nn.BatchNorm2d) for b in with_bn.features)
    assert all(b.conv.bias is not None for b in without.features)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in without.modules())
    assert [n for n, _ in with_bn.features.block1.named_children()] == ["conv", "bn", "act", "pool"]
    assert [n for n, _ in without.features.block1.named_children()] == ["conv", "act", "pool"]


def test_classifier_layout_and_dropout():
    model = build_cnn({**SMALL, "dropout_rate": 0.4, "num_classes": 5})
    assert [n for n, _ in model.classifier.named_children()] == ["flatten", "drop1", "fc", "act", "drop2", "out"]
    assert model.classifier.drop1.p == model.classifier.drop2.p == 0.4
    assert (model.classifier.fc.in_features, model.classifier.fc.out_features) == (4, 16)
    assert (model.classifier.out.in_features, model.classifier.out.out_features) == (16, 5)


def test_first_and_last_conv():
    model = build_cnn({**SMALL, "filter_counts": [3, 4, 5, 6, 7]})
    assert first_conv(model) is model.get_submodule("features.block1.conv")
    assert last_conv(model) is model.get_submodule("features.block5.conv")
    assert first_conv(model).weight.shape == (3, 3, 3, 3) and last_conv(model).out_channels == 7


def test_channels_last_bf16_autocast_on_cpu():
    model = build_cnn({**SMALL, "filter_size": 4}).to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 33, 33).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_the_cnn_pickles_as_a_module_level_class():
    """DataParallel-style tools, torch.save of a whole model and spawn-based workers pickle the module."""
    model = build_cnn({"base_filters": 4, "dense_neurons": 8, "input_size": 32})
    copy = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 32, 32)
    assert type(copy) is type(model) and torch.equal(copy.eval()(x), model.eval()(x))
