"""bnlib section 6, notebook 04's block: running averages (ewma, steps_to_reach) and the
noise and lag of a running mean after a shift in the data (batch_means_with_shift,
ewma_lag_and_noise). References: torch.nn.BatchNorm1d, closed forms."""
import math

import numpy as np
import pytest

import bnlib
from torch_reference import torch_running_stats_per_step


def random_batches(steps=20, m=8, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((steps, m, d)) * np.array([0.5, 2.0, 4.0]) + np.array([-3.0, 0.0, 7.0])


def test_ewma_of_batch_means_matches_torch_running_mean():
    batches = random_batches()
    want, _ = torch_running_stats_per_step(batches, momentum=0.1)
    assert np.allclose(bnlib.ewma(batches.mean(axis=1), 0.1), want, rtol=0, atol=1e-12)


def test_ewma_from_one_of_unbiased_variances_matches_torch_running_var():
    batches = random_batches(m=5)
    _, want = torch_running_stats_per_step(batches, momentum=0.3)
    got = bnlib.ewma(batches.var(axis=1, ddof=1), 0.3, start=1.0)
    assert np.allclose(got, want, rtol=0, atol=1e-12)


def test_ewma_of_a_constant_follows_the_closed_form():
    mu, m = 2.5, 0.1
    k = np.arange(1, 61)
    assert np.allclose(bnlib.ewma(np.full(60, mu), m), (1 - (1 - m) ** k) * mu, rtol=0, atol=1e-12)


def test_ewma_keeps_the_shape_of_2d_values():
    assert bnlib.ewma(np.ones((7, 4)), 0.5, start=np.zeros(4)).shape == (7, 4)


def test_ewma_rejects_a_momentum_outside_zero_one():
    with pytest.raises(ValueError, match="1 - k"):
        bnlib.ewma(np.ones(5), 0.99 * 100)


def test_ewma_rejects_a_3d_array():
    with pytest.raises(ValueError, match=r"\(T,\) or \(T, D\)"):
        bnlib.ewma(np.ones((2, 3, 4)), 0.1)


def test_steps_to_reach_matches_the_closed_form_after_a_step():
    # Running mean at level 1 when the data jumps to 3 at index 10: after the jump,
    # covered fraction at index 10 + k is 1 - (1 - m)^(k + 1).
    m = 0.1
    values = np.r_[np.ones(10), np.full(100, 3.0)]
    track = bnlib.ewma(values, m, start=1.0)
    want = math.ceil(math.log(0.1) / math.log(1 - m)) - 1
    assert bnlib.steps_to_reach(track, 10, 1.0, 3.0, 0.9) == want == 21


def test_steps_to_reach_works_for_a_downward_shift():
    track = np.array([5.0, 5.0, 4.0, 2.0, 1.2, 1.0])
    assert bnlib.steps_to_reach(track, 2, 5.0, 1.0, 0.9) == 2


def test_steps_to_reach_is_none_when_the_track_never_gets_there():
    assert bnlib.steps_to_reach(np.zeros(10), 3, 0.0, 1.0) is None


def test_steps_to_reach_rejects_a_start_outside_the_track():
    with pytest.raises(ValueError, match="start"):
        bnlib.steps_to_reach(np.zeros(5), 5, 0.0, 1.0)


def test_batch_means_with_shift_of_constant_values_have_no_noise():
    before, after = np.full(50, 0.2), np.full(50, 0.7)
    batch_means, true_means = bnlib.batch_means_with_shift(before, after, 30, 10, batch_size=4)
    want = np.r_[np.full(10, 0.2), np.full(20, 0.7)]
    assert np.allclose(batch_means, want, rtol=0, atol=1e-15)
    assert np.allclose(true_means, want, rtol=0, atol=1e-15)


def test_batch_means_with_shift_noise_is_the_standard_error_of_a_mean():
    values = np.random.default_rng(5).exponential(2.0, size=1000)   # skewed, std about 2
    batch_means, true_means = bnlib.batch_means_with_shift(values, 3 * values, 20000, 10000, 16, seed=1)
    noise = batch_means - true_means
    sigma = values.std()                                               # draws with replacement
    assert abs(noise[:10000].std() / (sigma / 4) - 1) < 0.03
    assert abs(noise[10000:].std() / (3 * sigma / 4) - 1) < 0.03
    assert abs(noise.mean()) < 0.02


def test_batch_means_with_shift_rejects_a_shift_outside_the_stream():
    with pytest.raises(ValueError, match="shift_at"):
        bnlib.batch_means_with_shift(np.ones(5), np.ones(5), 10, 10, 2)


def test_batch_means_with_shift_rejects_different_lengths():
    with pytest.raises(ValueError, match="same N"):
        bnlib.batch_means_with_shift(np.ones(5), np.ones(6), 10, 3, 2)


def test_ewma_lag_of_a_noise_free_step_follows_the_closed_form():
    truth = np.r_[np.ones(300), np.full(100, 3.0)]       # the running mean has settled at 1 by step 300
    for momentum in (0.1, 0.3):
        lag, noise = bnlib.ewma_lag_and_noise(truth, truth, momentum, 300)
        # covered fraction k steps after the shift: 1 - (1 - momentum)^(k + 1) >= 0.9
        assert lag == math.ceil(math.log(0.1) / math.log(1 - momentum)) - 1
        assert noise == 0.0


def test_ewma_noise_of_white_noise_matches_the_stationary_formula():
    # For i.i.d. noise of std s, the EWMA's stationary std is s * sqrt(momentum / (2 - momentum)).
    noise_in = np.random.default_rng(3).standard_normal(40000)
    truth = np.r_[np.zeros(20000), np.ones(20000)]
    _, noise = bnlib.ewma_lag_and_noise(truth + noise_in, truth, 0.1, 20000)
    assert abs(noise / math.sqrt(0.1 / 1.9) - 1) < 0.03


def test_ewma_lag_is_none_when_the_shift_is_never_covered():
    truth = np.r_[np.zeros(60), np.ones(5)]
    assert bnlib.ewma_lag_and_noise(truth, truth, 0.01, 60)[0] is None


def test_ewma_lag_and_noise_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same T"):
        bnlib.ewma_lag_and_noise(np.ones(10), np.ones(9), 0.1, 5)
