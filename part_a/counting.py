"""Closed-form parameter and MAC/FLOP counts of the Part A CNN, computed from the config without building it.

Notation: input S x S with c_0 channels; conv layer i = 1..5 has m_i filters of size k_i x k_i (m_0 = c_0);
n dense neurons; C classes; b = 1 with batch norm, 0 without. Convolutions use stride 1 and 'same' padding and each
block ends with MaxPool2d(2) (floor division), so conv i sees and outputs S_{i-1} x S_{i-1} and block i outputs

    S_i = floor(S / 2^i)            (S_5 >= 1 needs S >= 32)

Per layer (one image; a MAC is one multiply-accumulate, FLOPs = 2 * MACs):

    conv i     params  k_i^2 m_{i-1} m_i + (1 - b) m_i        (bias only without batch norm)
               MACs    S_{i-1}^2 k_i^2 m_{i-1} m_i
    bn i       params  2 b m_i                                (scale and shift; running stats are buffers)
    dense      params  (m_5 S_5^2 + 1) n                      MACs  m_5 S_5^2 n
    output     params  (n + 1) C                              MACs  n C

Totals:

    params = sum_{i=1..5} [k_i^2 m_{i-1} m_i + (1 + b) m_i] + (m_5 S_5^2 + 1) n + (n + 1) C
    MACs   = sum_{i=1..5} S_{i-1}^2 k_i^2 m_{i-1} m_i + m_5 S_5^2 n + n C
    FLOPs  = 2 MACs

With m filters of size k x k in every layer:

    params = k^2 m (c_0 + 4 m) + 5 (1 + b) m + (m S_5^2 + 1) n + (n + 1) C
    MACs   = k^2 m (c_0 S^2 + m (S_1^2 + S_2^2 + S_3^2 + S_4^2)) + m S_5^2 n + n C
           = k^2 m S^2 (c_0 + 85 m / 256) + m n S^2 / 1024 + n C        when 32 divides S

FLOPs match torch.utils.flop_counter.FlopCounterMode for a batch of one: it counts 2 * MACs of convolutions and
matrix products only (biases, batch norm, activations, pooling and the extra pad of even kernels count 0).

Default config (S=224, c_0=3, m=32, k=3, n=256, C=10): 442,282 params with batch norm (442,122 without),
197,294,592 MACs (197.3 M), 394,589,184 FLOPs (0.395 G) per image either way.

Run `python part_a/counting.py --base_filters=32 --filter_counts_strategy=doubling ...` for a per-layer table.
"""
from __future__ import annotations

from typing import Any

from sweepcnn.config import parse_args, run_cli
from sweepcnn.errors import UserError
from part_a.cnn_config import MODEL_OPTIONS, resolve_cnn_config


def count_cnn(config: dict[str, Any]) -> dict[str, Any]:
    """Return {"params", "macs", "flops", "layers"} for one image; each layer row is a dict with the module
    `name`, its output `shape` ((C, H, W) or (features,)), `params` and `macs`. ValueError for a bad config."""
    cfg = resolve_cnn_config(config)
    bn = cfg["batch_norm"]
    channels, size = cfg["in_channels"], cfg["input_size"]
    rows: list[dict[str, Any]] = []

    def row(name: str, shape: tuple[int, ...], params: int = 0, macs: int = 0) -> None:
        rows.append({"name": name, "shape": shape, "params": params, "macs": macs})

    for i, (m, k) in enumerate(zip(cfg["filter_counts"], cfg["filter_sizes"]), start=1):
        block = f"features.block{i}"
        row(f"{block}.conv", (m, size, size), k * k * channels * m + (0 if bn else m),
            size * size * k * k * channels * m)
        if bn:
            row(f"{block}.bn", (m, size, size), 2 * m)
        channels, size = m, size // 2
        row(f"{block}.pool", (m, size, size))
    flat, n, classes = channels * size * size, cfg["dense_neurons"], cfg["num_classes"]
    row("classifier.flatten", (flat,))
    row("classifier.fc", (n,), (flat + 1) * n, flat * n)
    row("classifier.out", (classes,), (n + 1) * classes, n * classes)
    macs = sum(r["macs"] for r in rows)
    return {"params": sum(r["params"] for r in rows), "macs": macs, "flops": 2 * macs, "layers": rows}


def format_counts(config: dict[str, Any]) -> str:
    """An aligned per-layer table (layer, output shape, params, MACs) followed by the totals."""
    cfg = resolve_cnn_config(config)
    counts = count_cnn(cfg)
    table = [("layer", "output shape", "params", "MACs")]
    table.append(("input", " x ".join(map(str, (cfg["in_channels"], cfg["input_size"], cfg["input_size"]))), "", ""))
    table += [(r["name"], " x ".join(map(str, r["shape"])), f"{r['params']:,}", f"{r['macs']:,}")
              for r in counts["layers"]]
    widths = [max(len(line[j]) for line in table) for j in range(4)]
    lines = [f"filter_counts={cfg['filter_counts']} filter_sizes={cfg['filter_sizes']} "
             f"batch_norm={str(cfg['batch_norm']).lower()} dense_neurons={cfg['dense_neurons']} "
             f"num_classes={cfg['num_classes']}", ""]
    for j, line in enumerate(table):
        lines.append(f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  {line[2]:>{widths[2]}}  "
                     f"{line[3]:>{widths[3]}}".rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", f"params: {counts['params']:>16,}  ({counts['params'] / 1e6:.3f} M)",
              f"MACs:   {counts['macs']:>16,}  ({counts['macs'] / 1e6:.3f} M, {counts['macs'] / 1e9:.3f} G)",
              f"FLOPs:  {counts['flops']:>16,}  ({counts['flops'] / 1e6:.3f} M, {counts['flops'] / 1e9:.3f} G)"
              "  = 2 x MACs, one image"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    config, _ = parse_args(argv, MODEL_OPTIONS, prog="python part_a/counting.py",
                           description="Print the Part A CNN's per-layer output shapes, parameters and MACs.")
    try:
        print(format_counts(config))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return 0


if __name__ == "__main__":
    run_cli(main)
