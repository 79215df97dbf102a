"""A fast stand-in for a training program in sweep tests: takes `--key=value` flags as train.py does, appends
`val_acc` per epoch to <out_dir>/<run id>/metrics.jsonl, and records what each of its processes saw.

    --fail=usage  exit 2 with an `error:` line, as a program refusing a parameter does
    --fail=crash  exit 1 without one
    --epochs=N --epoch_seconds=S  how long it "trains"
    --collective=True  under torchrun, join a gloo process group and all-reduce once (proves the ranks connect)

Each process writes rank<R>.json (its pid, RANK, WORLD_SIZE, CUDA_VISIBLE_DEVICES, ...) and, on SIGINT or SIGTERM,
signal<R>.txt with the signal's name; rank 0 then writes summary.json with the status train.py would.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
if args.get("fail") == "usage":
    print(f"error: --fail: {args['fail']!r} is refused (a stand-in's usage error)", file=sys.stderr)
    sys.exit(2)
if args.get("fail") == "crash":
    sys.exit(1)
rank = int(os.environ.get("RANK", "0"))
run_dir = Path(args.get("out_dir", ".")) / args.get("run_name", os.environ.get("WANDB_RUN_ID", "run"))
run_dir.mkdir(parents=True, exist_ok=True)
seen = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "CUDA_VISIBLE_DEVICES",
                                       "WANDB_RUN_ID", "OMP_NUM_THREADS")}
(run_dir / f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], **seen}))


def on_signal(signum, frame):
    (run_dir / f"signal{rank}.txt").write_text(signal.Signals(signum).name)
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps({"status": f"interrupted ({signal.Signals(signum).name})"}))
    sys.exit(0 if signum == signal.SIGTERM else 130)


signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
if args.get("collective") == "True":
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    (run_dir / f"allreduce{rank}.txt").write_text(str(int(total.item())))
for epoch in range(1, int(args.get("epochs", "1")) + 1):
    time.sleep(float(args.get("epoch_seconds", "0")))
    if rank == 0:
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, "val_acc": float(args.get("score", "0.5"))}) + "\n")
if rank == 0:
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished"}))
