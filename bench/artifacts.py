"""Seconds a study worker spends uploading its trial's state (--artifacts) per epoch, as a share of the epoch.

    python bench/artifacts.py --epochs 2                       # a local SeaweedFS S3 server (tests/s3.py)
    python bench/artifacts.py --artifacts s3://bucket/bench    # your own store (AWS_* variables)

Trains one fold as a study trial does (configs/quickstart.yaml, the main job's model and image size, on
examples/rbc) with the trial's upload callback (search/mirror.TrialUpload): after each epoch's last.pt the
changed files of the folder go to the store. Prints, per epoch, the epoch's seconds (training, validation,
checkpoint and upload), the upload's seconds, what it sent and the share, then what the same bytes would
take at 1 Gbit/s and 100 Mbit/s, since a local server measures the client's cost, not a network's.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import config  # noqa: E402
from detector.data.splits import load_splits  # noqa: E402
from detector.search.artifacts import open_artifacts  # noqa: E402
from detector.search.mirror import FolderMirror, TrialUpload  # noqa: E402
from detector.training.fit import fit  # noqa: E402
from detector.training.metric_log import read_metric_rows  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


@contextlib.contextmanager
def store_url(given: str | None):
    if given:
        yield given
        return
    from tests.s3 import s3_server

    with s3_server("detector-bench") as server:
        os.environ.update(server.env)
        yield "s3://detector-bench/bench"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--artifacts", help="s3://BUCKET/PREFIX or a folder (default: a local SeaweedFS server)")
    args = p.parse_args()
    cfg = config.load(args.config, [f"train.epochs={args.epochs}"])
    train_index, val_index = load_splits(cfg, log=lambda s: None)
    with store_url(args.artifacts) as url, tempfile.TemporaryDirectory() as tmp:
        upload = TrialUpload(FolderMirror(open_artifacts(url), Path(tmp) / "fold_0", "bench/trial_0000"),
                             record=lambda index: None)
        fit(cfg, train_index, val_index, Path(tmp) / "fold_0", callbacks=[upload], progress=False, log=print)
        rows = read_metric_rows(Path(tmp) / "fold_0")
        last_mb = (Path(tmp) / "fold_0" / "last.pt").stat().st_size / 1e6
    print(f"\n{cpu_name()}, {os.cpu_count()} cores; store {url}; last.pt {last_mb:.1f} MB\n")
    print("| epoch | epoch s | upload s | sent MB | upload share | at 1 Gbit/s | at 100 Mbit/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row, (seconds, sent) in zip(rows, upload.epochs):
        epoch_s, mb = float(row["seconds"]), sent / 1e6
        gbit, mbit = mb * 8 / 1000, mb * 8 / 100
        print(f"| {row['epoch']} | {epoch_s:.1f} | {seconds:.2f} | {mb:.1f} | {seconds / epoch_s:.1%} | "
              f"{gbit:.2f} s ({gbit / (epoch_s - seconds + gbit):.1%}) | "
              f"{mbit:.1f} s ({mbit / (epoch_s - seconds + mbit):.1%}) |")


if __name__ == "__main__":
    main()
