"""Label audit on hand-made labels with one known error of each kind, and the fixed COCO file."""
import json

import pytest

from detector.data.coco import load_coco
from detector.analysis.label_audit import AuditSettings, apply_fixes, audit


def labelled(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 300), (90, 90, 90)).save(tmp_path / "a.png")
    Image.new("RGB", (300, 300), (90, 90, 90)).save(tmp_path / "b.png")
    anns = [(1, 1, [10, 10, 40, 40]),  # right, and predicted so
            (1, 1, [100, 100, 40, 40]),  # labelled cat, predicted dog with confidence: class
            (1, 2, [200, 200, 40, 40]),  # nothing there says dog or anything: unconfirmed
            (2, 1, [10, 10, 60, 60]),  # the cat is at 10, 10, 40 x 40: loose
            (2, 2, [150, 150, 40, 40])]  # right
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 300, "height": 300},
                       {"id": 2, "file_name": "b.png", "width": 300, "height": 300}],
            "annotations": [{"id": 100 + n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for n, (i, c, b) in enumerate(anns)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(coco))
    p = lambda i, c, b, s: {"image_id": i, "category_id": c, "bbox": b, "score": s}
    results = [p(1, 1, [11, 10, 40, 40], 0.95), p(1, 2, [100, 101, 40, 40], 0.9), p(1, 1, [100, 100, 40, 40], 0.2),
               p(1, 1, [250, 20, 30, 30], 0.8),  # a cat nobody labelled: missing
               p(2, 1, [10, 10, 40, 40], 0.85), p(2, 2, [150, 150, 40, 40], 0.9),
               p(1, 2, [205, 205, 40, 40], 0.05)]  # too unsure to confirm the dog box
    return load_coco(path), results, coco


def test_each_injected_label_error_is_found_with_its_fix(tmp_path):
    index, results, raw = labelled(tmp_path)
    issues = audit(index, results, AuditSettings())
    kinds = {(i.kind, i.annotation_id) for i in issues}
    assert kinds == {("class", 101), ("unconfirmed", 102), ("loose", 103), ("missing", None)}
    assert [i.confidence for i in issues] == sorted((i.confidence for i in issues), reverse=True)
    by_kind = {i.kind: i for i in issues}
    assert by_kind["class"].suggestion == {"category_id": 2} and by_kind["class"].confidence > 0.6
    assert by_kind["loose"].suggestion == {"bbox": [10, 10, 40, 40]}
    fixed = apply_fixes(raw, issues)
    anns = {a["id"]: a for a in fixed["annotations"]}
    assert 102 not in anns and anns[101]["category_id"] == 2 and anns[103]["bbox"] == [10, 10, 40, 40]
    added = [a for a in fixed["annotations"] if a["id"] > 104]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in added] == [(1, 1, [250, 20, 30, 30])]
    assert len(raw["annotations"]) == 5  # the user's own file is left as it is


def test_a_second_audit_replaces_only_what_the_first_wrote_as_it_was_written(tmp_path):
    from detector.analysis.audit_files import edited, write_audit
    from detector.errors import DetectorError
    from detector.layout import RunPaths

    def drawings(n):
        def draw(folder):
            folder.mkdir(exist_ok=True)
            for k in range(n):
                (folder / f"{k:03d}.png").write_bytes(b"png")
            return [folder / f"{k:03d}.png" for k in range(n)]
        return draw

    paths = RunPaths(tmp_path)
    write_audit(tmp_path, [{"kind": "missing"}], {"images": []}, drawings(5))
    (paths.label_drawings / "mine.png").write_bytes(b"the user's")
    written = write_audit(tmp_path, [], {"images": [1]}, drawings(2))
    assert sorted(p.name for p in paths.label_drawings.iterdir()) == ["000.png", "001.png", "mine.png"]
    assert [p.name for p in written.drawings] == ["000.png", "001.png"] and not edited(tmp_path)
    paths.label_fixes.write_text('{"images": [1, 2]}')  # the user's review of the fixes
    assert edited(tmp_path)
    with pytest.raises(DetectorError, match="edited since audit-labels wrote it"):
        write_audit(tmp_path, [], {"images": []}, drawings(1))
    assert paths.label_fixes.read_text() == '{"images": [1, 2]}'
    write_audit(tmp_path, [], {"images": []}, drawings(1), force=True)
    assert json.loads(paths.label_fixes.read_text()) == {"images": []}


def test_an_unfinished_fold_is_not_audited_even_with_its_best_predictions_so_far(tmp_path):
    from detector.training.cv import out_of_fold_results
    from detector.files import write_json
    from detector.layout import RunPaths

    run = RunPaths(tmp_path)
    for k in (0, 1):
        write_json(run.fold(k).best_predictions, [{"image_id": k + 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                                                   "score": 0.9}])
    write_json(run.fold(0).summary, {"best_epoch": 2})
    assert out_of_fold_results(run, [[1], [2]]) is None  # W1: fold 1 stopped after epoch 0 of 3
    write_json(run.fold(1).summary, {"best_epoch": 2})
    results, ids = out_of_fold_results(run, [[1], [2]])
    assert ids == [1, 2] and len(results) == 2
