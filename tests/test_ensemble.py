import numpy as np
import pytest
import torch

from detector.inference.ensemble import Ensemble, fuse_wbf
from detector.errors import ConfigError


def _model(boxes, scores, labels):
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(labels)


def test_two_models_agreeing_fuse_to_the_weighted_mean_box_in_pixels():
    a = _model([[100, 50, 200, 150]], [0.9], [1])
    b = _model([[110, 60, 210, 160]], [0.6], [1])
    boxes, scores, labels = fuse_wbf(*zip(a, b), width=400, height=200, iou_thr=0.5)
    assert boxes.shape == (1, 4) and boxes.dtype == np.float32
    expected = (np.array([100, 50, 200, 150]) * 0.9 + np.array([110, 60, 210, 160]) * 0.6) / 1.5
    np.testing.assert_allclose(boxes[0], expected, atol=1e-3)  # back in pixels, not [0, 1]
    assert scores[0] == pytest.approx(0.75)
    assert labels.dtype == np.int64 and labels.tolist() == [1]


def test_different_labels_and_distant_boxes_stay_apart_and_one_model_boxes_are_down_weighted():
    a = _model([[0, 0, 10, 10], [50, 50, 90, 90]], [0.8, 0.7], [1, 2])
    b = _model([[0, 0, 10, 10]], [0.8], [2])
    boxes, scores, labels = fuse_wbf(*zip(a, b), width=100, height=100)
    assert sorted(labels.tolist()) == [1, 2, 2]
    assert scores.max() <= 0.8 / 2 + 1e-6  # each box was found by one of two models only (conf_type avg)


def test_weights_length_mismatch_and_empty_inputs():
    a = _model([[0, 0, 10, 10]], [0.8], [1])
    with pytest.raises(ConfigError, match="one per model"):
        fuse_wbf(*zip(a, a), width=100, height=100, weights=[1.0])
    with pytest.raises(ValueError, match="must match"):  # ensemble-boxes would call exit() here
        fuse_wbf([a[0]], [np.array([0.8, 0.5])], [a[2]], width=100, height=100)
    with pytest.raises(ValueError, match="one boxes, scores and labels array per model"):
        fuse_wbf([a[0], a[0]], [a[1]], [a[2], a[2]], width=100, height=100)
    empty = _model([], [], [])
    boxes, scores, labels = fuse_wbf(*zip(empty, empty), width=100, height=100)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.dtype == np.int64
    boxes, _, _ = fuse_wbf(*zip(empty, a), width=100, height=100)  # one model saw nothing
    assert boxes.shape == (1, 4)


def test_one_model_only_and_boxes_outside_the_image_are_clipped_and_degenerate_ones_dropped():
    a = _model([[-20, 10, 50, 300], [30, 30, 30, 60]], [0.9, 0.8], [1, 1])
    boxes, scores, labels = fuse_wbf([torch.from_numpy(a[0])], [torch.from_numpy(a[1])], [torch.from_numpy(a[2])],
                                     width=100, height=200)
    np.testing.assert_allclose(boxes, [[0, 10, 50, 200]], atol=1e-3)
    assert scores.tolist() == pytest.approx([0.9]) and labels.tolist() == [1]


def test_ensemble_of_no_models_is_an_error():
    with pytest.raises(ConfigError, match="at least one checkpoint"):
        Ensemble([])
