"""Bootstrap intervals over images (detector/intervals.py) and the choice of what to publish
(detector/selection.py), on hand-made detections whose right answer is known."""
import json

import numpy as np
import pytest

from detector import config
from detector.config import ScoreConfig
from detector.inference.ensemble import ImagePrediction
from detector.intervals import Bootstrap, ImageParts, compare, intervals
from detector.metrics import Thresholds, coco_map, evaluate_detections


def _scene(seed: int, images: int = 30, crowd: bool = True):
    """Three classes (one never in the ground truth) on `images` images: found boxes a little off with random
    scores, strays, misses, a crowd box, and one image with more than COCO's 100 detections."""
    rng = np.random.default_rng(seed)
    imgs, anns, results = [], [], []
    for i in range(1, images + 1):
        imgs.append({"id": i, "file_name": f"{i}.png", "width": 300, "height": 300})
        for _ in range(int(rng.integers(0, 6))):
            cid = 1 if rng.random() < 0.7 else 2
            x, y, w, h = (float(v) for v in (*rng.integers(0, 220, 2), *rng.integers(12, 80, 2)))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cid, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            if rng.random() < 0.85:
                results.append({"image_id": i, "category_id": cid, "score": round(float(rng.random()), 4),
                                "bbox": [x + rng.normal(0, 4), y + rng.normal(0, 4), w * rng.uniform(0.85, 1.15), h]})
        for _ in range(int(rng.integers(0, 5))):
            results.append({"image_id": i, "category_id": int(rng.integers(1, 4)), "score": float(rng.random() * 0.7),
                            "bbox": [float(rng.integers(0, 250)), float(rng.integers(0, 250)), 30.0, 40.0]})
    if crowd:
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 150.0, 150.0],
                     "area": 22500.0, "iscrowd": 1})
        results += [{"image_id": 1, "category_id": 1, "bbox": [10.0 + k, 10.0, 50.0, 50.0], "score": 0.3}
                    for k in range(3)]
    results += [{"image_id": 2, "category_id": 1, "bbox": [float(k), float(k), 20.0, 20.0], "score": 0.01 + k / 1000}
                for k in range(120)]  # more than maxDets: only the top 100 count
    gt = {"images": imgs, "annotations": anns,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]}
    return gt, results


def _parts(gt, results, threshold=0.4):
    return ImageParts.of(gt, results, Thresholds(threshold, {}), 0.5, ScoreConfig())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_image_drawn_once_is_cocos_map_and_the_operating_points_f1(seed):
    gt, results = _scene(seed)
    parts = _parts(gt, results)
    once = {k: float(v[0]) for k, v in parts.metrics(np.ones((1, parts.images))).items()}
    coco = coco_map(gt, results)
    expected = evaluate_detections(gt, results, score_threshold=0.4)
    for key in ("map", "map_50", "map_75"):
        assert once[key] == pytest.approx(getattr(coco, key), abs=1e-6), key
    for key in ("precision", "recall", "f1", "score"):
        assert once[key] == pytest.approx(expected.value(key), abs=1e-9), key


def test_an_image_drawn_twice_counts_as_two_images():
    gt, results = _scene(3, images=8, crowd=False)
    weights = np.ones((1, 8))
    weights[0, 4], weights[0, 6] = 2, 0  # image 5 twice, image 7 not at all
    doubled = {"images": [*gt["images"], {"id": 100, "file_name": "copy.png", "width": 300, "height": 300}],
               "annotations": [*gt["annotations"], *({**a, "id": 1000 + n, "image_id": 100}
                                                     for n, a in enumerate(gt["annotations"]) if a["image_id"] == 5)],
               "categories": gt["categories"]}
    doubled["images"] = [i for i in doubled["images"] if i["id"] != 7]
    doubled["annotations"] = [a for a in doubled["annotations"] if a["image_id"] != 7]
    copied = [r for r in results if r["image_id"] != 7] + [{**r, "image_id": 100} for r in results if r["image_id"] == 5]
    assert _parts(gt, results).metrics(weights)["map_50"][0] == pytest.approx(coco_map(doubled, copied).map_50,
                                                                               abs=0.01)
    assert _parts(gt, results).metrics(weights)["f1"][0] == pytest.approx(
        evaluate_detections(doubled, copied, score_threshold=0.4).f1)


def test_intervals_hold_the_estimate_are_seeded_and_narrow_with_more_images():
    gt, results = _scene(4, images=20)
    parts = _parts(gt, results)
    point = parts.metrics(np.ones((1, parts.images)))
    found = intervals(parts, Bootstrap(1000, seed=0))
    assert set(found) == {"map", "map_50", "map_75", "precision", "recall", "f1", "score"}
    for key, iv in found.items():
        assert iv.low <= point[key][0] <= iv.high and iv.high - iv.low > 0.01, key
    assert intervals(parts, Bootstrap(1000, seed=0)) == found
    assert intervals(parts, Bootstrap(1000, seed=1)) != found
    big_gt, big_results = _scene(4, images=180)
    big = intervals(_parts(big_gt, big_results), Bootstrap(1000, seed=0))
    assert big["map"].high - big["map"].low < 0.6 * (found["map"].high - found["map"].low)
    assert intervals(parts, Bootstrap(0)) == {}


def test_a_paired_comparison_says_better_worse_or_within_noise():
    gt, results = _scene(5, images=40, crowd=False)
    rng = np.random.default_rng(0)
    loose = [{**r, "bbox": [r["bbox"][0] + rng.normal(0, 9), r["bbox"][1] + rng.normal(0, 9), *r["bbox"][2:]]}
             for r in results]
    a, b = _parts(gt, results), _parts(gt, loose)
    diffs = compare(a, b, Bootstrap(1000))
    assert diffs["map"].verdict == "better" and diffs["map"].value > 0 and diffs["map"].interval.low > 0
    assert compare(b, a, Bootstrap(1000))["map"].verdict == "worse"
    same = compare(a, a, Bootstrap(1000))
    assert all(d.verdict == "within noise" and d.value == 0 for d in same.values())
    reordered = sorted(results, key=lambda r: -r["image_id"])  # the same boxes: within noise at exactly 0
    assert compare(a, _parts(gt, reordered), Bootstrap(1000))["map"].interval.low == pytest.approx(0.0)
    point_only = compare(a, b, Bootstrap(0))["map"]
    assert point_only.interval.low == point_only.interval.high == pytest.approx(point_only.value)


def _members(boxes_of, images: int = 24):
    """Stored predictions of several members on `images` images of two 40 px boxes each; boxes_of(member,
    image, box) gives a member's (dx, score) for a box, or None when it misses it."""
    gt_images, anns, stored = [], [], []
    truth = [(20.0, 20.0), (120.0, 100.0)]
    for i in range(1, images + 1):
        gt_images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 200})
        anns += [{"id": len(anns) + k + 1, "image_id": i, "category_id": 1, "bbox": [x, y, 40.0, 40.0],
                  "area": 1600.0, "iscrowd": 0} for k, (x, y) in enumerate(truth)]
        members = []
        for m in range(len(boxes_of.members)):
            found = [(x, y, boxes_of(m, i, k)) for k, (x, y) in enumerate(truth)]
            found = [(x + f[0], y + f[1], f[2]) for x, y, f in found if f is not None]
            members.append(ImagePrediction(f"{i}.png", 200, 200,
                                           np.array([[x, y, x + 40, y + 40] for x, y, _ in found], np.float32).reshape(-1, 4),
                                           np.array([s for _, _, s in found], np.float32),
                                           np.ones(len(found), np.int64), ["a"] * len(found), [1] * len(found)))
        stored.append(ImagePrediction(f"{i}.png", 200, 200, np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                      np.zeros(0, np.int64), members=members))
    gt = {"images": gt_images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    return gt, stored


def _select(gt, stored, *values):
    from detector.operating_point import tune
    from detector.inference.ensemble import ImagePrediction as P
    from detector.selection import select

    cfg = config.load(None, ["tune.min_class_boxes=1000", "eval.bootstrap=500", *values])
    ids = [i["id"] for i in gt["images"]]
    single = config.with_values(cfg, {"tune.wbf": False})
    alone = [tune(gt, [P(p.source, p.width, p.height, m.boxes, m.scores, m.labels, m.names, m.category_ids)
                       for p in stored for m in [p.members[k]]], ids, single) for k in range(len(stored[0].members))]
    return select(gt, stored, ids, cfg, alone)


class _Members:
    """Three members' (dx, dy, score) for each true box, or None for a miss."""

    members = (0, 1, 2)

    def __init__(self, seed: int, kind: str):
        self.rng, self.kind = np.random.default_rng(seed), kind

    def __call__(self, m, i, k):
        r = self.rng
        if self.kind == "one strong":  # member 0 tight; members 1 and 2 6-9 px off each way, as confident
            if m == 0:
                return float(r.normal(0, 0.7)), float(r.normal(0, 0.7)), 0.9
            sign = lambda: float(r.choice([-1.0, 1.0]))
            return sign() * float(r.uniform(6, 9)), sign() * float(r.uniform(6, 9)), 0.9
        if r.random() < 0.35:  # "complementary": each member misses a third of the boxes, others than the rest
            return None
        return float(r.normal(0, 2.5)), float(r.normal(0, 2.5)), float(r.uniform(0.5, 1.0))


def test_a_strong_member_is_published_alone_when_weaker_ones_loosen_its_boxes():
    gt, stored = _members(_Members(0, "one strong"))
    point, selection = _select(gt, stored)
    assert selection.best_member == 0 and selection.chosen == [0] and point.members == [0]
    assert not any(o.passes for o in selection.options)
    assert selection.options[0].members == [0, 1, 2]  # at best (weights by mAP) the fusion is member 0 again
    assert all(o.versus_best["map"].value <= 1e-9 and o.versus_best["map"].verdict != "better"
               for o in selection.options)
    assert "no fusion beats member 0" in selection.reason
    assert _select(gt, stored, "tune.guard=false")[1].chosen == [0, 1, 2]  # the guard is what refused them


def test_members_that_find_what_the_others_miss_are_published_fused():
    gt, stored = _members(_Members(1, "complementary"), images=40)
    point, selection = _select(gt, stored)
    assert len(selection.chosen) >= 2 and point.members == selection.chosen
    chosen = next(o for o in selection.options if o.members == selection.chosen)
    assert chosen.passes and chosen.versus_best["map_50"].verdict == "better"
    assert chosen.point.metrics.map >= max(o.point.metrics.map for o in selection.options if o.passes)


def test_evaluate_prints_intervals_and_the_paired_difference_to_another_model(tmp_path):
    from tests.helpers import run_cli

    gt, results = _scene(6, images=40, crowd=False)
    rng = np.random.default_rng(1)
    loose = [{**r, "bbox": [r["bbox"][0] + rng.normal(0, 9), r["bbox"][1] + rng.normal(0, 9), *r["bbox"][2:]]}
             for r in results]
    gt_path, tight_path, loose_path = tmp_path / "gt.json", tmp_path / "tight.json", tmp_path / "loose.json"
    for path, doc in ((gt_path, gt), (tight_path, results), (loose_path, loose)):
        path.write_text(json.dumps(doc))
    done = run_cli("evaluate", "--predictions", str(tight_path), str(gt_path), "--against", str(loose_path),
                   "--against", str(tight_path), "--json", "--bootstrap", "500")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    low, high = out["intervals"]["map"]
    assert low <= out["map"] <= high and "500 resamples" in out["bootstrap"]
    versus_loose, versus_itself = out["versus"]
    assert versus_loose["against"] == str(loose_path) and versus_loose["map"]["verdict"] == "better"
    assert versus_itself["map"]["verdict"] == "within noise" and versus_itself["map"]["difference"] == 0
    text = run_cli("evaluate", "--predictions", str(tight_path), str(gt_path), "--against", str(loose_path))
    assert text.returncode == 0, text.stderr
    again = json.loads(run_cli("evaluate", "--predictions", str(tight_path), str(gt_path), "--json").stdout)
    low, high = again["intervals"]["map"]  # the default 2000 resamples, seed 0: the same every time
    assert f"mAP@[.5:.95] {out['map']:.4f} [{low:.4f}, {high:.4f}]" in text.stdout
    assert "minus" in text.stdout and "better" in text.stdout and "2000 resamples" in text.stdout
    off = json.loads(run_cli("evaluate", "--predictions", str(tight_path), str(gt_path), "--json",
                             "--bootstrap", "0").stdout)
    assert "intervals" not in off and off["map"] == out["map"]
    bad = run_cli("evaluate", "--predictions", str(tight_path), str(gt_path), "--bootstrap", "5")
    assert bad.returncode == 2 and "--bootstrap" in bad.stderr and "Traceback" not in bad.stderr


class _TightAndLoose:
    """Two members that find every box: member 0 within a pixel, member 1 7 px off, as confident (scores
    drawn alike, so no threshold tells their boxes apart)."""

    members = (0, 1)

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, m, i, k):
        score = float(self.rng.uniform(0.5, 1.0))
        if m == 0:
            return float(self.rng.normal(0, 0.5)), float(self.rng.normal(0, 0.5)), score
        return 7.0 * float(self.rng.choice([-1.0, 1.0])), 7.0, score


def test_a_wbf_setting_that_raises_the_score_but_loosens_the_boxes_is_not_kept():
    import dataclasses

    from detector.operating_point import _candidate, fused_results, tune

    gt, stored = _members(_TightAndLoose(0))
    ids = [i["id"] for i in gt["images"]]
    cfg = config.load(None, ["tune.min_class_boxes=1000", "ensemble.iou_thr=0.7", "ensemble.conf_type=avg"])
    merged = dataclasses.replace(cfg.ensemble, iou_thr=0.4)  # merges the loose boxes into the tight ones
    configured = _candidate(gt, fused_results(stored, ids, cfg.ensemble), cfg.ensemble, cfg)
    loose = _candidate(gt, fused_results(stored, ids, merged), merged, cfg)
    assert loose.score > configured.score and loose.metrics.map < configured.metrics.map  # the trap
    point = tune(gt, stored, ids, cfg)
    assert point.metrics.map >= configured.metrics.map and point.ensemble.iou_thr != 0.4
