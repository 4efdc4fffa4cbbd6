"""Seconds a study worker spends uploading its trial's state (--artifacts) per epoch, as a share of the epoch.

    python bench/artifacts.py --epochs 2                       # a local SeaweedFS S3 server (tests/s3.py)
    python bench/artifacts.py --artifacts s3://bucket/bench    # your own store (AWS_* variables)

Trains one fold as a study trial does (configs/quickstart.yaml, the main job's model and image size, on
examples/rbc) with the trial's upload callback (search/mirror.TrialUpload): after each epoch's last.pt the
changed files of the folder go to the store, in a background thread while the next epoch trains. Prints,
per epoch, the epoch's seconds, what the epoch waited for the upload (the training thread's cost), how long
the upload itself took in the background and what it sent, and what the same bytes would take at 1 Gbit/s
and 100 Mbit/s (a local server measures the client's cost, not a network's): the upload stays hidden while
it takes less than an epoch.
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


class TimedUpload(TrialUpload):
    """The trial's callback, recording what each epoch waited for it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.waited: list[float] = []

    def on_epoch_end(self, state) -> None:
        super().on_epoch_end(state)
        self.waited.append(state.row["upload_seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--artifacts", help="s3://BUCKET/PREFIX or a folder (default: a local SeaweedFS server)")
    args = p.parse_args()
    cfg = config.load(args.config, [f"train.epochs={args.epochs}"])
    train_index, val_index = load_splits(cfg, log=lambda s: None)
    with store_url(args.artifacts) as url, tempfile.TemporaryDirectory() as tmp:
        upload = TimedUpload(FolderMirror(open_artifacts(url), Path(tmp) / "fold_0", "bench/trial_0000"),
                             lambda index: None)
        fit(cfg, train_index, val_index, Path(tmp) / "fold_0", callbacks=[upload], progress=False, log=print)
        upload.mirror.wait()
        rows = read_metric_rows(Path(tmp) / "fold_0")
        last_mb = (Path(tmp) / "fold_0" / "last.pt").stat().st_size / 1e6
    jobs = upload.mirror.jobs[-len(rows):]  # the first job is the fold's start (config and data files)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores; store {url}; last.pt {last_mb:.1f} MB\n")
    print("| epoch | epoch s | the epoch waited s | share | upload in the background s | sent MB | "
          "at 1 Gbit/s | at 100 Mbit/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row, waited, (seconds, sent) in zip(rows, upload.waited, jobs):
        epoch_s, mb = float(row["seconds"]), sent / 1e6
        print(f"| {row['epoch']} | {epoch_s:.1f} | {waited:.3f} | {waited / epoch_s:.2%} | {seconds:.2f} | "
              f"{mb:.1f} | {mb * 8 / 1000:.2f} s | {mb * 8 / 100:.1f} s |")


if __name__ == "__main__":
    main()
