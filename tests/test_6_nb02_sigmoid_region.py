"""bnlib section 6, notebook 02's block: sigmoid_linearity and r2_linear_fit.

References come from outside bnlib: numpy.polyfit / numpy.linalg.lstsq fits, torch.sigmoid,
and values computed by hand with math.exp.
"""
import math

import numpy as np
import pytest

import bnlib
from torch_reference import torch_sigmoid


def polyfit_r2(z, s):
    """R^2 of numpy.polyfit's straight line through (z, s)."""
    a, b = np.polyfit(z, s, 1)
    return 1.0 - np.sum((s - a * z - b) ** 2) / np.sum((s - s.mean()) ** 2)


def test_sigmoid_linearity_r2_matches_polyfit_on_the_classic_points():
    x = np.arange(-10, 11, dtype=np.float64)
    for z in (x, (x - x.mean()) / x.std(), 3 * x / x.std() + 2):
        r2, _ = bnlib.sigmoid_linearity(z)
        assert abs(r2 - polyfit_r2(z, torch_sigmoid(z))) < 1e-12


def test_sigmoid_linearity_gap_is_distance_to_tangent_at_zero_by_hand():
    # at z = 2 the tangent 1/2 + z/4 is 1, the sigmoid 1 / (1 + e^-2)
    _, gap = bnlib.sigmoid_linearity(np.array([0.0, 2.0, -1.0]))
    assert abs(gap - (1.0 - 1.0 / (1.0 + math.exp(-2.0)))) < 1e-15


def test_sigmoid_linearity_gap_of_the_classic_points_is_about_two():
    # at z = 10 the tangent reaches 3 while the sigmoid stays below 1
    _, gap = bnlib.sigmoid_linearity(np.arange(-10, 11, dtype=np.float64))
    assert abs(gap - (3.0 - 1.0 / (1.0 + math.exp(-10.0)))) < 1e-12


def test_standardizing_makes_the_sigmoid_nearly_linear():
    x = np.arange(-10, 11, dtype=np.float64)
    r2_raw, gap_raw = bnlib.sigmoid_linearity(x)
    r2_std, gap_std = bnlib.sigmoid_linearity((x - x.mean()) / x.std())
    assert r2_raw < 0.9 < 0.99 < r2_std
    assert gap_std < 0.1 < 1.0 < gap_raw


def test_sigmoid_linearity_works_column_by_column():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 3)) * np.array([0.5, 2.0, 4.0]) + np.array([0.0, 1.0, -3.0])
    r2, gap = bnlib.sigmoid_linearity(z)
    assert r2.shape == gap.shape == (3,)
    s = torch_sigmoid(z)
    for j in range(3):
        assert abs(r2[j] - polyfit_r2(z[:, j], s[:, j])) < 1e-12
        assert abs(gap[j] - np.max(np.abs(s[:, j] - 0.5 - z[:, j] / 4))) < 1e-12


def test_sigmoid_linearity_rejects_identical_points():
    with pytest.raises(ValueError, match="equal"):
        bnlib.sigmoid_linearity(np.full(5, 0.3))


def test_sigmoid_linearity_rejects_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        bnlib.sigmoid_linearity(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        bnlib.sigmoid_linearity(np.zeros((2, 2, 2)))


def test_r2_linear_fit_is_one_for_an_exactly_affine_target():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3))
    y = x @ rng.standard_normal((3, 2)) + np.array([1.0, -2.0])
    assert abs(bnlib.r2_linear_fit(x, y) - 1.0) < 1e-12


def test_r2_linear_fit_matches_numpy_lstsq_in_sample_and_held_out():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 4))
    y = np.tanh(x @ rng.standard_normal((4, 3))) + 0.1 * rng.standard_normal((60, 3))
    design = np.column_stack([x[:30], np.ones(30)])
    coef = np.linalg.lstsq(design, y[:30], rcond=None)[0]
    held = np.column_stack([x[30:], np.ones(30)]) @ coef
    want_held = 1 - np.sum((y[30:] - held) ** 2) / np.sum((y[30:] - y[30:].mean(axis=0)) ** 2)
    want_in = 1 - np.sum((y[:30] - design @ coef) ** 2) / np.sum((y[:30] - y[:30].mean(axis=0)) ** 2)
    assert abs(bnlib.r2_linear_fit(x[:30], y[:30], x[30:], y[30:]) - want_held) < 1e-10
    assert abs(bnlib.r2_linear_fit(x[:30], y[:30]) - want_in) < 1e-10


def test_r2_linear_fit_of_one_input_equals_squared_correlation():
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 5, 25)
    y = np.exp(x / 3)
    assert abs(bnlib.r2_linear_fit(x, y) - np.corrcoef(x, y)[0, 1] ** 2) < 1e-12


def test_r2_linear_fit_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        bnlib.r2_linear_fit(np.zeros((5, 2)), np.zeros(4))


def test_r2_linear_fit_rejects_constant_targets():
    with pytest.raises(ValueError, match="constant"):
        bnlib.r2_linear_fit(np.arange(5.0), np.ones(5))
