import dataclasses
import json
import sys

import numpy as np
import pytest

from detector import config
from detector.errors import DatasetError
from detector.config import ScoreConfig
from detector.data.sample import SampleSpec, write_sample_dataset
from detector.data.coco import load_coco
from detector.files import write_json
from detector.layout import RunPaths
from detector.metrics import coco_map, evaluate_detections, f_beta, match
from detector.training.cv import out_of_fold_operating_point
from detector.thresholds import tune_thresholds
from tests.test_search import study_cfg


def _hand_made(seed: int):
    """Two classes on 12 images: boxes near the truth with random scores, strays, and misses."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for i in range(1, 13):
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 200})
        for k in range(int(rng.integers(1, 6))):
            cid = 1 if rng.random() < 0.7 else 2
            x, y = float(rng.integers(0, 150)), float(rng.integers(0, 150))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cid,
                                "bbox": [x, y, 40.0, 40.0], "area": 1600.0, "iscrowd": 0})
            if rng.random() < 0.8:  # found, a little off, with a score
                results.append({"image_id": i, "category_id": cid, "bbox": [x + rng.normal(0, 3), y, 40.0, 40.0],
                                "score": round(float(rng.random()), 3)})
        for _ in range(int(rng.integers(0, 4))):  # strays
            results.append({"image_id": i, "category_id": int(rng.integers(1, 3)),
                            "bbox": [float(rng.integers(0, 150)), float(rng.integers(0, 150)), 30.0, 30.0],
                            "score": round(float(rng.random()) * 0.8, 3)})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, results


@pytest.mark.parametrize("seed,beta", [(0, 1.0), (1, 1.0), (2, 2.0), (3, 0.5)])
def test_the_tuned_threshold_equals_a_brute_force_sweep(seed, beta):
    gt, results = _hand_made(seed)
    score = ScoreConfig(beta=beta)
    thresholds, metrics = tune_thresholds(gt, match(gt, results, 0.5), coco_map(gt, results), score,
                                          min_class_boxes=10**6)  # global only
    swept = {t: evaluate_detections(gt, results, score_threshold=t, score=score).score
             for t in sorted({r["score"] for r in results})}
    best = max(swept.values())
    assert metrics.score == pytest.approx(best)
    assert thresholds.default == max(t for t, s in swept.items() if s == pytest.approx(best))  # ties: fewer boxes
    assert thresholds.per_class == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_selection_scores_at_the_best_threshold_whatever_the_configured_one(seed):
    gt, results = _hand_made(seed)
    selected = evaluate_detections(gt, results, score_threshold=None)
    swept = {t: evaluate_detections(gt, results, score_threshold=t)
             for t in sorted({r["score"] for r in results})}
    assert selected.score == pytest.approx(max(m.score for m in swept.values()))
    assert selected.f1 == pytest.approx(swept[selected.threshold].f1)
    fixed = evaluate_detections(gt, results, score_threshold=0.3)
    assert fixed.threshold == 0.3 and fixed.score <= selected.score


def test_per_class_thresholds_need_enough_boxes_and_must_raise_the_score():
    gt, results = _hand_made(4)
    matched, coco = match(gt, results, 0.5), coco_map(gt, results)
    global_only, base = tune_thresholds(gt, matched, coco, ScoreConfig(), min_class_boxes=10**6)
    chosen, metrics = tune_thresholds(gt, matched, coco, ScoreConfig(), min_class_boxes=1)
    assert metrics.score >= base.score
    if chosen.per_class:  # kept only because they scored more
        assert metrics.score > base.score
        again = evaluate_detections(gt, results, score_threshold=chosen.default, class_thresholds=chosen.per_class)
        assert again.score == pytest.approx(metrics.score)
    few = {c["category_id"] for c in gt["annotations"]}
    counts = {c: sum(a["category_id"] == c for a in gt["annotations"]) for c in few}
    limited, _ = tune_thresholds(gt, matched, coco, ScoreConfig(), min_class_boxes=max(counts.values()))
    assert set(limited.per_class) <= {c for c, n in counts.items() if n >= max(counts.values())}


@pytest.mark.slow
def test_a_study_tunes_on_val_never_reads_test_and_scores_test_once(sample, tmp_path):
    from detector.search import Objective, report_study, run_study

    test = write_sample_dataset(tmp_path / "test_split", SampleSpec(images=6, seed=5))["annotations"]
    test_images = {str(p.resolve()) for p in (tmp_path / "test_split" / "images").iterdir()}
    watched = {str(test.resolve()), *test_images}
    reads: list[str] = []
    inside = {"objective": False}

    def hook(event, args):
        if inside["objective"] and event == "open" and args and str(args[0]) in watched:
            reads.append(str(args[0]))

    sys.addaudithook(hook)  # cannot be removed: it only records while the flag is set
    original = Objective.__call__

    def watched_call(self, trial):
        inside["objective"] = True
        try:
            return original(self, trial)
        finally:
            inside["objective"] = False

    cfg = study_cfg(sample, "search.n_trials=1", "train.epochs=1", f"data.test.annotations={test}")
    Objective.__call__ = watched_call
    try:
        result = run_study(cfg, tmp_path / "study", log=lambda s: None)
    finally:
        Objective.__call__ = original
    assert result.best_trial == 0 and reads == []  # selection and tuning never opened data.test
    scored = json.loads((tmp_path / "study" / "best" / "test.json").read_text())
    assert scored["trial"] == 0 and scored["images"] == 6 and 0.0 <= scored["metrics"]["score"] <= 1.0
    meta = json.loads((tmp_path / "study" / "best" / "ensemble.json").read_text())
    assert 0.0 <= meta["operating_point"]["score_threshold"] <= 1.0 and "score_threshold" not in meta
    text, _ = report_study(tmp_path / "study")
    assert "published models on data.val" in text and "test score on data.test" in text and "6 images" in text
    dashboard_serves(tmp_path / "study" / "study.db", "study")
    shared = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test=cfg.data.val))
    with pytest.raises(DatasetError, match=r"data.test .* shares .* image file\(s\) with data.val"):
        run_study(shared, tmp_path / "study2", log=lambda s: None)


def dashboard_serves(database, name):
    """optuna-dashboard on localhost reads the study and its trials back through its HTTP API."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", "from optuna_dashboard._cli import main; main()",
                               f"sqlite:///{database}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        [summary] = [s for s in studies if s["study_name"] == name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as r:
            study = json.loads(r.read())
        [trial] = study["trials"]
        assert trial["state"] == "Complete" and {p["name"] for p in trial["params"]} == {"train.lr", "train.batch_size"}
        assert "cv_mean" in {a["key"] for a in trial["user_attrs"]}
    finally:
        server.kill()
        server.wait()


def _two_class_split():
    """20 images with one box of each class: class 1 found at 0.9 with a stray at 0.6, class 2 found at 0.4
    with a stray at 0.1; no one threshold keeps both classes' hits and drops both classes' strays."""
    images, annotations, results = [], [], []
    for i in range(1, 21):
        images.append({"id": i, "file_name": f"{i}.png", "width": 100, "height": 100})
        for cid, box, hit, stray in ((1, [10, 10, 30, 30], 0.9, 0.6), (2, [55, 55, 30, 30], 0.4, 0.1)):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cid, "bbox": box,
                                "area": 900.0, "iscrowd": 0})
            results += [{"image_id": i, "category_id": cid, "bbox": box, "score": hit},
                        {"image_id": i, "category_id": cid, "bbox": [box[0] + 40 - 80 * (cid == 2), 60, 10, 10],
                         "score": stray}]
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, results


def test_per_class_thresholds_are_chosen_where_one_threshold_cannot_serve_every_class():
    gt, results = _two_class_split()
    matched, coco = match(gt, results, 0.5), coco_map(gt, results)
    chosen, metrics = tune_thresholds(gt, matched, coco, ScoreConfig(), min_class_boxes=20)
    assert sorted(chosen.per_class) == [1, 2]
    assert 0.6 < chosen.per_class[1] <= 0.9 and 0.1 < chosen.per_class[2] <= 0.4
    assert metrics.f1 == pytest.approx(1.0)
    alone, alone_metrics = tune_thresholds(gt, matched, coco, ScoreConfig(), min_class_boxes=21)  # too few boxes
    assert alone.per_class == {} and alone_metrics.f1 < 0.9


def _two_members_off_by_six_pixels():
    from detector.inference.ensemble import ImagePrediction

    images = []
    for i in range(1, 11):
        members = [ImagePrediction(f"{i}.png", 100, 100, np.array([[20 + dx, 20, 60 + dx, 60]], np.float32),
                                   np.array([0.8], np.float32), np.array([1]), ["a"], [1]) for dx in (-6, 6)]
        images.append(ImagePrediction(f"{i}.png", 100, 100, np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                      np.zeros(0, np.int64), members=members))
    gt = {"images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(1, 11)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [20, 20, 40, 40], "area": 1600.0,
                           "iscrowd": 0} for i in range(1, 11)],
          "categories": [{"id": 1, "name": "a"}]}
    return gt, images


def test_the_wbf_search_finds_the_fusion_the_configured_one_misses_unless_the_gain_is_too_small():
    from detector.operating_point import tune

    gt, images = _two_members_off_by_six_pixels()  # the members' boxes overlap at IoU 0.54: apart at 0.55
    cfg = config.load(None, ["ensemble.iou_thr=0.55", "tune.min_class_boxes=1000"])
    point = tune(gt, images, list(range(1, 11)), cfg)
    assert point.ensemble.iou_thr < 0.54 and point.score > point.configured_score + 0.1
    assert point.metrics.precision == pytest.approx(1.0) and point.evaluations > 20
    strict = config.with_values(cfg, {"tune.min_gain": 1.0})  # no gain is worth replacing the configured settings
    kept = tune(gt, images, list(range(1, 11)), strict)
    assert kept.ensemble == cfg.ensemble and kept.score < point.score


def _recall_or_precision():
    """One image, three boxes: the top prediction and the seventh find one each, the five between find nothing.
    F1 is best at 0.9 (P 1, R 1/3: F1 1/2), F2 at 0.3 (P 2/7, R 2/3: F2 10/19), with P != R at both."""
    truth = [[0.0, 0.0, 20.0, 20.0], [60.0, 60.0, 20.0, 20.0], [120.0, 0.0, 20.0, 20.0]]
    gt = {"images": [{"id": 1, "file_name": "1.png", "width": 200, "height": 200}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 400.0, "iscrowd": 0}
                          for i, b in enumerate(truth)],
          "categories": [{"id": 1, "name": "a"}]}
    strays = [{"image_id": 1, "category_id": 1, "bbox": [170.0, 30.0 * k, 20.0, 20.0], "score": s}
              for k, s in enumerate([0.8, 0.7, 0.6, 0.5, 0.4])]
    results = [{"image_id": 1, "category_id": 1, "bbox": truth[0], "score": 0.9}, *strays,
               {"image_id": 1, "category_id": 1, "bbox": truth[1], "score": 0.3}]
    return gt, results


def test_score_beta_is_f_beta_pinned_to_numbers_and_chooses_the_operating_point():
    assert f_beta(2 / 7, 2 / 3, 2.0) == pytest.approx(10 / 19)
    assert f_beta(1.0, 1 / 3, 1.0) == pytest.approx(0.5)
    assert f_beta(1.0, 1 / 3, 0.5) == pytest.approx(5 / 7)  # (1.25 * 1/3) / (0.25 + 1/3)
    gt, results = _recall_or_precision()
    cfg = config.load(None, ["score.beta=2"])
    recall_first = evaluate_detections(gt, results, score_threshold=None, score=cfg.score)
    assert recall_first.threshold == 0.3 and recall_first.f_beta == pytest.approx(10 / 19)
    assert (recall_first.precision, recall_first.recall) == pytest.approx((2 / 7, 2 / 3))
    assert recall_first.score == pytest.approx(cfg.score.w_map * recall_first.map_50 + cfg.score.w_f1 * 10 / 19)
    balanced = evaluate_detections(gt, results, score_threshold=None, score=config.load(None, []).score)
    assert balanced.threshold == 0.9 and balanced.f_beta == pytest.approx(0.5) == balanced.f1


@pytest.mark.parametrize("beta,threshold", [(1.0, 0.9), (2.0, 0.3)])
def test_score_beta_reaches_a_cv_runs_out_of_fold_operating_point(tmp_path, beta, threshold):
    gt, results = _recall_or_precision()
    write_json(tmp_path / "train.json", gt)
    run = RunPaths(tmp_path / "run")
    fold = run.fold(0)
    fold.root.mkdir(parents=True)
    write_json(fold.summary, {})  # the fold is done: out_of_fold_results reads only its predictions
    write_json(fold.best_predictions, results)
    cfg = config.load(None, [f"score.beta={beta}"])
    point = out_of_fold_operating_point(run, load_coco(tmp_path / "train.json", check_images=False), [[1]], cfg)
    assert point.thresholds.default == threshold
