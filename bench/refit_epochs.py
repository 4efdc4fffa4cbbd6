"""How many epochs a refit on all of data.train needs: members refit with several epoch counts (and seeds),
each scored alone on data.val and data.test, and what selection.py publishes from them, with intervals.

The folds choose their epochs on (k-1)/k of the data, where an epoch is fewer steps; with 2 folds of 3
epochs (the main job) the folds' best epoch is usually their last, so the folds cannot say whether more
would help. This trains `--seeds` members per epoch count on the config's data.train (as the study's refit
does: its config, patience off, the last epoch kept), then prints per count: each member's mAP on val and
test, their spread (max - min), the published models' test mAP with its interval, and the seconds.

    python bench/refit_epochs.py configs/quickstart.yaml --epochs 3 6            # RBC, about 30 minutes
    python bench/refit_epochs.py configs/quickstart.yaml --epochs 3 6 --set data.train.annotations=...
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from detector import config
from detector.data.splits import load_splits, load_test
from detector.inference.ensemble import Ensemble
from detector.analysis.evaluate import evaluate_held_out
from detector.intervals import Bootstrap
from detector.inference.predict import ground_truth_metrics, run_predictions
from detector.training.refit import refit, seed_members


def one_count(cfg, epochs: int, seeds: int, root: Path, train, val, test) -> dict:
    started = time.perf_counter()
    entries = refit(seed_members(cfg, epochs, seeds), train, val, root, log=lambda s: None)
    seconds = time.perf_counter() - started
    held = evaluate_held_out(cfg, root, entries, val)
    every = Ensemble.from_checkpoints([root / e.path for e in entries], cfg.ensemble, cfg.train.device)
    run = run_predictions(every, [r.path for r in test.images], gt=test, with_members=True)
    boot = Bootstrap(cfg.eval.bootstrap)
    alone = [ground_truth_metrics(run.member(i), test, held.operating_point.thresholds, iou_threshold=0.5,
                                  score=cfg.score, bootstrap=boot)[0][1].metrics for i in range(len(entries))]
    published = Ensemble.from_checkpoints([root / entries[i].path for i in held.published], held.operating_point.ensemble,
                                          cfg.train.device, held.operating_point.thresholds)
    prun = run_predictions(published, [r.path for r in test.images], gt=test)
    [(_, card)] = ground_truth_metrics(prun, test, published.thresholds, iou_threshold=0.5, score=cfg.score,
                                       bootstrap=boot)
    pub = card.metrics
    return {"epochs": epochs, "seconds": round(seconds, 1),
            "val_map": [m.metrics.map for m in held.members], "test_map": [m.map for m in alone],
            "test_map_50": [m.map_50 for m in alone], "published": held.published,
            "reason": held.selection.reason, "published_test": {k: pub.value(k) for k in ("map", "map_50", "map_75")},
            "published_intervals": {k: list(v) for k, v in pub.intervals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    cfg = config.load(args.config, args.overrides)
    train, val = load_splits(cfg, log=lambda s: None)
    test = load_test(cfg, train, val, log=lambda s: None)
    if test is None:
        raise SystemExit("the config needs data.test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in args.epochs:
            rows.append(one_count(cfg, epochs, args.seeds, Path(tmp) / f"e{epochs}", train, val, test))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{len(train.images)} training, {len(val.images)} val, {len(test.images)} test images; {args.seeds} seeds")
    print(f"{'epochs':>6} {'val mAP (each)':>24} {'test mAP (each)':>24} {'spread':>7} {'published':>10} "
          f"{'test mAP':>24} {'s/member':>9}")
    for r in rows:
        iv = r["published_intervals"].get("map", [float("nan")] * 2)
        print(f"{r['epochs']:>6} {' '.join(f'{v:.3f}' for v in r['val_map']):>24} "
              f"{' '.join(f'{v:.3f}' for v in r['test_map']):>24} {max(r['test_map']) - min(r['test_map']):>7.3f} "
              f"{','.join(map(str, r['published'])):>10} "
              f"{r['published_test']['map']:.3f} [{iv[0]:.3f}, {iv[1]:.3f}]".rjust(24)
              + f" {r['seconds'] / args.seeds:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
