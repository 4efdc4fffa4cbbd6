"""Sliced inference: tiles that cover the image, and tile predictions merged into one per model."""
import numpy as np
import pytest
import torch

from detector.inference.slicing import merge_tiles, tile_origins, tiles


def test_tiles_cover_the_image_overlap_their_neighbours_and_end_flush():
    boxes = tiles(700, 1000, 416, 0.2)
    covered = np.zeros((700, 1000), bool)
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 == 416 and y1 - y0 == 416  # every tile at full size: the last ones end flush
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = tile_origins(1000, 416, 0.2)
    assert xs == [0, 332, 584] and all(b - a <= 416 * 0.8 for a, b in zip(xs, xs[1:]))
    assert tiles(300, 400, 416, 0.2) == [(0, 0, 400, 300)]  # smaller than a tile: the image itself


def _part(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_a_cut_piece_joins_its_whole_view_and_no_large_box_swallows_the_cells_inside_it():
    left = _part([[300, 100, 360, 160], [10, 10, 50, 50], [5, 5, 400, 400]], [0.9, 0.8, 0.99], [1, 1, 1])
    right = _part([[0, 100, 60, 160], [0, 100, 20, 160], [0, 100, 60, 160], [200, 50, 260, 110]],
                  [0.7, 0.95, 0.6, 0.5], [1, 1, 2, 1])
    merged = merge_tiles([left, right], [(0, 0, 416, 416), (300, 0, 716, 416)], 716, 416)
    kept = sorted((tuple(b.tolist()), round(float(s), 2), int(c))
                  for b, s, c in zip(merged["boxes"], merged["scores"], merged["labels"]))
    assert kept == [((5.0, 5.0, 400.0, 400.0), 0.99, 1),  # a large box (true or not) removes nothing inside it
                    ((10.0, 10.0, 50.0, 50.0), 0.8, 1),
                    ((300.0, 100.0, 360.0, 160.0), 0.6, 2),  # cut, but no whole view of class 2: kept
                    ((300.0, 100.0, 360.0, 160.0), 0.9, 1),  # one cell: the left tile's whole view; the right
                    ((500.0, 50.0, 560.0, 110.0), 0.5, 1)]  # tile's pieces of it went; its own cell stays


def test_pieces_judged_window_by_window_match_all_boxes_against_all():
    from detector.inference.slicing import _covered, _covered_pieces, _cut

    rng = np.random.default_rng(0)
    windows = tiles(1200, 1600, 416, 0.3)
    parts = []
    for x0, y0, x1, y1 in windows:
        xy = rng.uniform(0, 380, (60, 2))
        wh = rng.uniform(4, 120, (60, 2))
        boxes = np.clip(np.concatenate([xy, xy + wh], 1), 0, [x1 - x0, y1 - y0, x1 - x0, y1 - y0])
        parts.append(_part(boxes.tolist(), rng.uniform(0, 1, 60).tolist(), rng.integers(1, 3, 60).tolist()))
    boxes = torch.cat([p["boxes"] + torch.tensor([w[0], w[1], w[0], w[1]], dtype=torch.float32)
                       for p, w in zip(parts, windows)])
    labels = torch.cat([p["labels"] for p in parts])
    cut = torch.cat([_cut(p["boxes"], w, 1600, 1200) for p, w in zip(parts, windows)])
    everything = cut & _covered(boxes, labels, boxes[~cut], labels[~cut])  # C1: 15k boxes took 7.6 GB this way
    assert cut.sum() > 100 and everything.sum() > 10
    assert torch.equal(_covered_pieces(boxes, labels, cut, [len(p["boxes"]) for p in parts], windows), everything)


def test_too_many_tiles_and_too_much_overlap_are_refused_with_the_fix():
    from detector import config
    from detector.errors import ConfigError, DetectorError
    from detector.inference.slicing import predict_tiles

    with pytest.raises(DetectorError, match=r"makes 5929 tiles of 32 px at overlap 0.75 .* larger tile"):
        predict_tiles(lambda crops: [], np.zeros((640, 640, 3), np.uint8), 32, 0.75, False)
    with pytest.raises(ConfigError, match=r"slice_overlap must lie in \[0, 0.75\]"):
        config.from_dict({"ensemble": {"slice_overlap": 0.99}}, "predict overrides")
