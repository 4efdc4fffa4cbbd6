"""Training throughput of 2 processes (torchrun, DDP) vs 1 on this machine, same config and global batch.

Runs `detector train` for `--epochs` epochs on the example RBC data, once as one process and once under
`torchrun --nproc_per_node 2`, each with the machine's cores split evenly between its processes, and
prints training images per second (from metrics.csv's train_seconds) and their ratio. On a CPU the two
processes share the same cores, so the ratio says what the DDP overhead costs here, not what two GPUs give.

    python bench/ddp.py
    python bench/ddp.py --epochs 2 --set data.image_size=320
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(nproc: int, out: Path, args) -> float:
    """Training images per second, over every epoch of one run."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "detector.cli", "train", args.config, "--out",
           str(out), "--quiet", "--set", f"train.epochs={args.epochs}", "--set", "train.patience=0",
           *[a for s in args.overrides for a in ("--set", s)]]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = int(args.images) * len(rows)
    return images / sum(float(r["train_seconds"]) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    from detector import config
    from detector.data.splits import load_splits

    train_index, _ = load_splits(config.load(args.config, args.overrides))
    args.images = len(train_index.images)
    with tempfile.TemporaryDirectory() as tmp:
        one = train(1, Path(tmp) / "one", args)
        two = train(2, Path(tmp) / "two", args)
    print(f"{args.images} training images x {args.epochs} epoch(s), {os.cpu_count()} cores")
    print(f"1 process:   {one:6.2f} images/s")
    print(f"2 processes: {two:6.2f} images/s  (x{two / one:.2f}; both on the same cores: data parallelism vs one "
          "process's threads, not what two GPUs give)")


if __name__ == "__main__":
    main()
