"""Closed-form counts (part_a/counting.py) against the real module: numel, FlopCounterMode and hooked shapes."""
from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sweepcnn.errors import UserError
from tests.helpers import ROOT
from part_a.counting import count_cnn
from part_a.counting import main as counting_main
from part_a.model import build_cnn
from part_a.cnn_config import ACTIVATIONS

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def random_config(rng: random.Random) -> dict:
    """Small random model configs: even and odd kernels, odd input sizes, BN on/off, every filter strategy."""
    cfg: dict = {
        "input_size": rng.choice([32, 33, 40, 47, 64, 65, 96, 97, 101, 128]),
        "in_channels": rng.choice([1, 3]),
        "batch_norm": rng.random() < 0.5,
        "dense_neurons": rng.choice([1, 7, 32, 100, 256]),
        "num_classes": rng.choice([2, 3, 10, 37]),
        "activation": rng.choice(list(ACTIVATIONS)),
        "dropout_rate": rng.choice([0.0, 0.3]),
    }
    if rng.random() < 0.3:
        cfg["filter_counts"] = [rng.randint(1, 24) for _ in range(5)]
    else:
        strategy = rng.choice(["same", "doubling", "halving"])
        cfg["filter_counts_strategy"] = strategy
        cfg["base_filters"] = rng.randint(1, 16 if strategy == "same" else 4)  # doubling/halving reach 16x base
    if rng.random() < 0.4:
        cfg["filter_sizes"] = [rng.randint(1, 6) for _ in range(5)]
    else:
        cfg["filter_size"] = rng.choice([1, 2, 3, 4, 5, 6])
    return cfg


CONFIGS = [random_config(random.Random(seed)) for seed in range(240)]


def real_counts(cfg: dict) -> tuple[int, int, dict[str, tuple]]:
    """(parameter count, FlopCounterMode total for one image, output shape per module name) of the built model."""
    model = build_cnn(cfg).eval()
    shapes: dict[str, tuple] = {}
    for name, module in model.named_modules():
        if name.count(".") >= 1:
            module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    x = torch.randn(1, cfg["in_channels"], cfg["input_size"], cfg["input_size"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops(), shapes


def test_configs_cover_the_interesting_cases():
    kernels = {k for c in CONFIGS for k in c.get("filter_sizes", [c.get("filter_size")])}
    assert {1, 2, 3, 4, 5, 6} <= kernels
    assert {33, 65, 97, 101} <= {c["input_size"] for c in CONFIGS}
    assert {True, False} == {c["batch_norm"] for c in CONFIGS} and {1, 3} == {c["in_channels"] for c in CONFIGS}
    assert {"same", "doubling", "halving"} <= {c.get("filter_counts_strategy") for c in CONFIGS}
    assert sum("filter_counts" in c for c in CONFIGS) > 20 and sum("filter_sizes" in c for c in CONFIGS) > 20


def test_closed_form_matches_the_real_model_on_random_configs():
    torch.manual_seed(0)
    for cfg in CONFIGS:
        counts = count_cnn(cfg)
        params, flops, shapes = real_counts(cfg)
        assert counts["params"] == params, cfg
        assert counts["flops"] == flops == 2 * counts["macs"], cfg
        for row in counts["layers"]:
            assert row["shape"] == shapes[row["name"]], (cfg, row)


def test_rows_sum_to_totals_and_follow_the_formulas():
    for cfg in CONFIGS[:50]:
        counts = count_cnn(cfg)
        assert sum(r["params"] for r in counts["layers"]) == counts["params"]
        assert sum(r["macs"] for r in counts["layers"]) == counts["macs"]
        assert counts["flops"] == 2 * counts["macs"]
    # the docstring's special case: m filters of size k everywhere, 32 divides S
    S, c0, m, k, n, C = 224, 3, 32, 3, 256, 10
    for bn in (True, False):
        counts = count_cnn({"base_filters": m, "filter_size": k, "dense_neurons": n, "num_classes": C,
                            "input_size": S, "in_channels": c0, "batch_norm": bn})
        b = int(bn)
        assert counts["params"] == \
            k**2 * m * (c0 + 4 * m) + 5 * (1 + b) * m + (m * (S // 32) ** 2 + 1) * n + (n + 1) * C
        assert counts["macs"] * 256 * 1024 == (k**2 * m * S**2 * (256 * c0 + 85 * m)) * 1024 + m * n * S**2 * 256 \
            + n * C * 256 * 1024


def test_default_config_numbers():
    assert count_cnn({}) == count_cnn({"batch_norm": True})
    assert (count_cnn({})["params"], count_cnn({})["macs"]) == (442_282, 197_294_592)
    assert count_cnn({"batch_norm": False})["params"] == 442_122


def test_too_small_input_is_rejected():
    for size in (31, 16, 1):
        with pytest.raises(ValueError, match="32"):
            count_cnn({"input_size": size})
    assert count_cnn({"input_size": 32})["layers"][-4]["shape"] == (32, 1, 1)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="learning_rate"):
        count_cnn({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="filter_sizes"):
        count_cnn({"filter_sizes": [3, 3]})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "part_a/counting.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_prints_a_table():
    out = run_cli("--base_filters=8", "--filter_counts_strategy=doubling")
    assert out.returncode == 0, out.stderr
    expected = count_cnn({"base_filters": 8, "filter_counts_strategy": "doubling"})
    assert "features.block5.conv" in out.stdout and "128 x 14 x 14" in out.stdout
    assert f"{expected['params']:,}" in out.stdout and f"{expected['flops']:,}" in out.stdout


@pytest.mark.parametrize("args", [[], ["--help"], ["--base_filters=16", "--filter_counts_strategy=doubling"]])
def test_a_count_or_its_help_imports_neither_torch_nor_wandb(args):
    """The counts are closed-form: printing them (or the flags) must not wait for torch to import."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['part_a/counting.py', *{args!r}]\n"
            "try:\n    runpy.run_path('part_a/counting.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'wandb') if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr
    assert "params:" in out.stdout or "--base_filters" in out.stdout


@pytest.mark.parametrize("flag", ["--bogus=1", "--input_size=31"])
def test_cli_bad_flag_exits_2_with_one_line_error(flag):
    out = run_cli(flag)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr and out.stdout == ""


@pytest.mark.parametrize("flag, key", [("--activation=foo", "activation"), ("--dropout_rate=1.0", "dropout_rate"),
                                       ("--input_size=31", "input_size"), ("--filter_sizes=3,3", "filter_sizes")])
def test_cli_bad_values_are_user_errors(flag, key):
    with pytest.raises(UserError, match=key):
        counting_main([flag])
