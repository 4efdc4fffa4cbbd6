"""The operating point on RBC: tuned post-processing vs the fixed defaults, and focal loss vs cross-entropy.

Runs one trial's work twice on the example RBC data (k-fold on train/, then the top-k ensemble on valid/),
once with the box classifier's cross-entropy and once with focal loss (alpha 0.6, the seed recipe's), at
equal epochs and with every other setting the same. For each it prints:
- the test/ split (never used for choosing) scored at the configured settings (ensemble.*,
  eval.score_threshold) and at the operating point tuned on valid/ from stored predictions;
- wbc (the rare class, 1:21) precision and recall on test/ at the operating point;
- the time the tuning took as a share of the whole trial (training + held-out prediction + tuning).

    python bench/operating_point.py                 # configs/quickstart.yaml's recipe (about 12 minutes)
    python bench/operating_point.py --set train.epochs=2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from detector import config
from detector.training.cv import run_cv
from detector.inference.ensemble import Ensemble
from detector.analysis.evaluate import evaluate_held_out
from detector.metrics import Thresholds
from detector.inference.predict import ground_truth_metrics, run_predictions
from detector.data.splits import load_splits, load_test

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, loss in (("cross-entropy", ["model.box_loss=ce"]),
                           ("focal a=0.6", ["model.box_loss=focal", "model.focal_alpha=0.6"])):
            cfg = config.load(args.config, [*args.overrides, *loss])
            train, val = load_splits(cfg)
            test = load_test(cfg, train, val)
            if test is None:
                raise SystemExit("the config needs data.test (configs/quickstart.yaml names examples/rbc/test)")
            print(f"{name}: {len(train.images)} training, {len(val.images)} valid, {len(test.images)} test images, "
                  f"{cfg.train.epochs} epochs x {cfg.cv.folds} folds", flush=True)
            started = time.perf_counter()
            cv = run_cv(cfg, Path(tmp) / name, index=train, progress=False, log=lambda s: None)
            held = evaluate_held_out(cfg, Path(tmp) / name, cv.top_models, val)
            trial_seconds = time.perf_counter() - started
            point = held.operating_point
            paths = [Path(tmp) / name / m.path for m in cv.top_models]
            configured = Ensemble.from_checkpoints(paths, cfg.ensemble, cfg.train.device)
            tuned = Ensemble.from_checkpoints(paths, point.ensemble, cfg.train.device, point.thresholds)
            run = run_predictions(configured, [r.path for r in test.images], gt=test, with_members=True)
            [(_, before)] = ground_truth_metrics(run, test, Thresholds(cfg.eval.score_threshold, {}),
                                                 iou_threshold=cfg.eval.iou_threshold, score=cfg.score)
            before = before.metrics
            run = run_predictions(tuned, [r.path for r in test.images], gt=test)
            [(_, after)] = ground_truth_metrics(run, test, tuned.thresholds, iou_threshold=cfg.eval.iou_threshold,
                                                score=cfg.score)
            after = after.metrics
            rows.append((name, before, after, point, trial_seconds))
            e = point.ensemble
            print(f"  operating point: threshold {point.thresholds.default:.3f} "
                  f"(per class {point.thresholds.per_class or 'none'}), WBF {e.conf_type} iou {e.iou_thr} skip "
                  f"{e.skip_box_thr} weights {e.weights or 'equal'}; valid score {point.score:.4f} vs "
                  f"{point.configured_score:.4f} configured ({point.evaluations} settings, {point.seconds:.2f}s)",
                  flush=True)

    print(f"\n{'loss':<14} {'test score':>10} {'-> tuned':>9} {'map_50':>7} {'F1':>6} {'-> tuned':>9} "
          f"{'wbc P':>6} {'wbc R':>6} {'tuning s':>9} {'share':>6}")
    for name, before, after, point, seconds in rows:
        wbc = after.per_class.get("wbc")
        print(f"{name:<14} {before.score:>10.4f} {after.score:>9.4f} {after.map_50:>7.4f} "
              f"{before.f1:>6.3f} {after.f1:>9.3f} {wbc.precision if wbc else float('nan'):>6.3f} "
              f"{wbc.recall if wbc else float('nan'):>6.3f} {point.seconds:>9.2f} {point.seconds / seconds:>6.2%}")
    print("test score: w_map * mAP@0.5 + w_f1 * F_beta on test/ (score.* of the config); 'share': tuning time "
          "over the trial's training, held-out prediction and tuning time")


if __name__ == "__main__":
    main()
