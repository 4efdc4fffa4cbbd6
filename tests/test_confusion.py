"""The confusion matrix on hand-made boxes whose every cell is known."""
import numpy as np

from detector.analysis.confusion import confusion_matrix
from detector.metrics import Thresholds, match_counts


def _box(image_id, cid, x, y, w=20, h=20, score=None, crowd=0):
    d = {"image_id": image_id, "category_id": cid, "bbox": [x, y, w, h]}
    return d if score is None else {**d, "score": score}


def hand_made():
    anns = [_box(1, 1, 0, 0), _box(1, 2, 100, 100), _box(2, 1, 50, 50), _box(3, 2, 0, 0), _box(3, 1, 200, 200)]
    gt = {"images": [{"id": i, "width": 300, "height": 300} for i in (1, 2, 3)],
          "annotations": [{**a, "id": i + 1, "area": 400.0, "iscrowd": 0} for i, a in enumerate(anns)],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    results = [
        _box(1, 1, 1, 1, score=0.9),  # cat found: diagonal
        _box(1, 1, 101, 100, score=0.8),  # the dog taken for a cat
        _box(2, 2, 250, 250, score=0.7),  # a dog where nothing is: background row
        _box(2, 1, 50, 50, score=0.2),  # under the threshold: not counted, so that cat is missed
        _box(3, 2, 0, 1, score=0.95),  # dog found
        _box(3, 2, 1, 0, score=0.9),  # the same dog again: a duplicate is a false detection
        _box(3, 2, 200, 201, score=0.6),  # under dog's own threshold (0.65): the cat there is missed
    ]
    return gt, results


def test_every_cell_of_a_hand_made_case():
    gt, results = hand_made()
    m = confusion_matrix(gt, results, Thresholds(0.5, {2: 0.65}))
    #                        cat dog background(missed)
    assert m.counts.tolist() == [[1, 0, 2],   # cat: 1 found, 2 missed (one low score, one under dog's threshold)
                                 [1, 1, 0],   # dog: 1 taken for a cat, 1 found
                                 [0, 2, 0]]   # false detections: a dog on nothing, a duplicate dog
    d = m.to_dict()
    assert d["classes"] == ["cat", "dog", "background"] and d["counts"] == m.counts.tolist()
    assert "true \\ predicted" in m.table() and m.table().splitlines()[3].split()[-1] == "0"


def test_the_diagonal_is_the_true_positives_precision_and_recall_count():
    rng = np.random.default_rng(0)
    gt, _ = hand_made()
    results = [{**_box(int(rng.integers(1, 4)), int(rng.integers(1, 3)), *rng.uniform(0, 220, 2)),
                "score": float(rng.random())} for _ in range(300)]
    results += [{**a, "bbox": [v + 1 for v in a["bbox"]], "category_id": 3 - a["category_id"], "score": 0.99}
                for a in gt["annotations"]]  # every box also predicted as the other class
    m = confusion_matrix(gt, results, Thresholds(0.3, {}))
    counts = match_counts(gt, results, score_threshold=0.3, iou_threshold=0.5)
    for i, cid in enumerate((1, 2)):
        tp, fp, fn = counts.get(cid, (0, 0, 0))
        assert m.counts[i, i] == tp
        assert m.counts[i].sum() == tp + fn  # each box once: found, confused or missed
        assert m.counts[:, i].sum() == tp + fp  # each kept prediction once

