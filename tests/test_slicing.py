"""Sliced inference: tiles that cover the image, and tile predictions merged into one per model."""
import numpy as np
import torch

from detector.slicing import merge_tiles, tile_origins, tiles


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
