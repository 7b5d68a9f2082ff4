"""J and F on hand-constructed masks whose scores are worked out by hand in the comments."""

import numpy as np
import pytest

from sav_dataset.utils.metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    disk_kernel,
    region_similarity,
)
from sav_dataset.utils.plot import per_frame_curve
from sav_dataset.utils.scoring import ObjectScores, summarize

SIZE = 100  # 100x100 images: diagonal 141.4, tolerance radius ceil(0.008 * 141.4) = 2 px


def square(top: int, left: int, side: int = 20) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def hline(row: int, first: int = 20, last: int = 59) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[row, first : last + 1] = True
    return mask


def test_radius_and_disk():
    assert boundary_radius(SIZE, SIZE) == 2
    assert boundary_radius(480, 854) == 8  # ceil(0.008 * 979.7) = ceil(7.84)
    expected = np.array(
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=np.uint8
    )
    np.testing.assert_array_equal(disk_kernel(2), expected)


def test_boundary_of_square_is_outline_shifted_towards_origin():
    # A 20x20 square at rows/cols 20..39 has its contour on the 21x21 box 19..39: 4 * 21 - 4 = 80 px.
    edges = boundary_map(square(20, 20))
    outline = np.zeros_like(edges)
    outline[19:40, 19:40] = True
    outline[20:39, 20:39] = False
    np.testing.assert_array_equal(edges, outline)
    assert edges.sum() == 80


def test_empty_vs_empty_scores_one():
    empty = np.zeros((SIZE, SIZE), dtype=bool)
    assert region_similarity(empty, empty).tolist() == [1.0]
    assert boundary_f_measure(empty, empty).tolist() == [1.0]


@pytest.mark.parametrize("pred_empty", [True, False])
def test_empty_vs_nonempty_scores_zero(pred_empty):
    empty, full = np.zeros((SIZE, SIZE), dtype=bool), square(30, 30)
    pred, gt = (empty, full) if pred_empty else (full, empty)
    assert region_similarity(pred, gt).tolist() == [0.0]
    assert boundary_f_measure(pred, gt).tolist() == [0.0]


def test_shifted_squares():
    # Shift 5 px right: overlap 20x15 = 300, union 500 -> J = 0.6.
    # Boundaries are 80 px each. Matched within 2 px: 18 of 21 px on the top and on the bottom edge,
    # 4 px of the near vertical edge (the ones within 2 px of the other box's top/bottom rows), 0 of the
    # far one: 40 / 80 both ways -> P = R = F = 0.5.
    gt, pred = square(20, 20), square(20, 25)
    assert region_similarity(pred, gt)[0] == pytest.approx(0.6, abs=1e-12)
    assert boundary_f_measure(pred, gt)[0] == pytest.approx(0.5, abs=1e-12)
    assert boundary_f_measure(gt, pred)[0] == pytest.approx(0.5, abs=1e-12)


def test_extra_far_blob_lowers_precision_only():
    # A far 1-px blob adds 400 -> 401 to the union and a 4-px unmatched contour to the prediction:
    # P = 80 / 84, R = 1, F = 2P / (P + 1) = 160 / 164.
    gt = square(20, 20)
    pred = gt.copy()
    pred[80, 80] = True
    assert region_similarity(pred, gt)[0] == pytest.approx(400 / 401, abs=1e-12)
    assert boundary_f_measure(pred, gt)[0] == pytest.approx(160 / 164, abs=1e-12)


def test_thin_structures():
    # A 1-px line 40 px long has a contour of 2 rows x 41 px. Two px apart, the lines share no pixel
    # (J = 0) yet every contour pixel lies within the 2-px tolerance (F = 1); four px apart the closest
    # contours are 3 px apart (F = 0).
    gt = hline(50)
    assert boundary_map(gt).sum() == 82
    assert region_similarity(hline(52), gt)[0] == 0.0
    assert boundary_f_measure(hline(52), gt)[0] == 1.0
    assert boundary_f_measure(hline(54), gt)[0] == 0.0
    # Half the line: J = 20 / 40. Its contour (rows 49-50, cols 19..39: 42 px) lies on the GT contour
    # (P = 1); GT contour px within 2 px of it are cols 19..41 on both rows, 46 of 82 (R = 46 / 82);
    # F = 2PR / (P + R) = 92 / 128.
    half = hline(50, 20, 39)
    assert region_similarity(half, gt)[0] == 0.5
    assert boundary_f_measure(half, gt)[0] == pytest.approx(92 / 128, abs=1e-12)


def test_void_pixels_are_ignored():
    gt = square(20, 20)
    pred = gt.copy()
    pred[60:70, 60:70] = True
    void = np.zeros_like(gt)
    void[55:75, 55:75] = True
    assert region_similarity(pred, gt, void)[0] == 1.0
    assert boundary_f_measure(pred, gt, void)[0] == 1.0
    assert region_similarity(pred, gt)[0] == pytest.approx(400 / 500)


def test_stack_matches_single_frames():
    rng = np.random.default_rng(0)
    gts = rng.random((5, 37, 53)) > 0.6
    preds = rng.random((5, 37, 53)) > 0.6
    preds[2] = False
    j_stack, f_stack = region_similarity(preds, gts), boundary_f_measure(preds, gts)
    for t in range(5):
        assert j_stack[t] == region_similarity(preds[t], gts[t])[0]
        assert f_stack[t] == boundary_f_measure(preds[t], gts[t])[0]
    assert j_stack[2] == 0.0 and f_stack[2] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        region_similarity(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


def test_summary_is_mean_of_object_means():
    a = ObjectScores("v", "1", ["0", "1"], np.array([1.0, 0.5]), np.array([1.0, 1.0]))
    b = ObjectScores("v", "2", ["0"], np.array([0.0]), np.array([0.5]))
    s = summarize([a, b])
    assert a.j_mean == 75.0 and b.f_mean == 50.0
    assert s.j == pytest.approx((75.0 + 0.0) / 2)
    assert s.f == pytest.approx((100.0 + 50.0) / 2)
    assert s.jf == pytest.approx((37.5 + 75.0) / 2)


def test_per_frame_curve_bins_normalised_time():
    # Object a: J&F 100, 100, 0, 0 over its 4 frames; object b: 50 on its single frame (t = 0.5 -> bin 1).
    a = ObjectScores("v", "1", list("abcd"), np.array([1.0, 1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0, 0.0]))
    b = ObjectScores("v", "2", ["a"], np.array([0.5]), np.array([0.5]))
    centres, means, counts = per_frame_curve([a, b], bins=2)
    np.testing.assert_allclose(centres, [0.25, 0.75])
    np.testing.assert_allclose(means, [100.0, 50.0 / 3])
    np.testing.assert_array_equal(counts, [2, 3])
