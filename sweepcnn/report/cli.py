"""Report on a trained run (Part A or Part B): what the model predicts on the test split, where it fails, what its
first layer learned and what it looks at.

    python -m sweepcnn.report RUN_DIR [--wandb] [--device cpu] [--table_rows N]      (or: sweepcnn-report ...)

The command line of sweepcnn.report.run_report, which says what RUN_DIR/report/ holds.
"""
from __future__ import annotations

from pathlib import Path

from sweepcnn.config import run_cli
from sweepcnn.errors import ArgumentParser, UserError


def main(argv: list[str]) -> int:
    """python -m sweepcnn.report RUN_DIR [--wandb] [--device DEVICE]."""
    parser = ArgumentParser(prog="python -m sweepcnn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder of part_a/train.py or part_b/finetune.py")
    parser.add_argument("--wandb", action="store_true", help="also log the report to a new W&B run (mode: "
                        "$WANDB_MODE, else online with an API key, else offline)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--table_rows", type=int, help="with --wandb: at most this many test images in the table of "
                        "every test prediction (default: all)")
    args = parser.parse_args(argv)
    if args.table_rows is not None and args.table_rows < 1:
        raise UserError(f"--table_rows: {args.table_rows} is not a positive number of rows")
    # torch loads after the flags are parsed, which keeps --help fast
    from sweepcnn.report.run_report import report_run_folder

    page = report_run_folder(args.run_dir, args.device, new_wandb_run=args.wandb, table_rows=args.table_rows)
    print(f"report: {page}")
    return 0


def cli() -> None:
    """The console entry point (sweepcnn-report, python -m sweepcnn.report)."""
    run_cli(main)
