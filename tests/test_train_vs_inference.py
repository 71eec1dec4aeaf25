"""Running averages (bnlib.ewma, bnlib.steps_to_reach) and notebook 04's self-check
(bnlib.check_running_stats_update). References: torch.nn.BatchNorm1d, closed forms."""
import math

import numpy as np
import pytest
import torch

import bnlib


def torch_running_stats_per_step(batches, momentum):
    """running_mean and running_var of torch.nn.BatchNorm1d after each training step."""
    bn = torch.nn.BatchNorm1d(batches.shape[2], momentum=momentum, dtype=torch.float64)
    means, variances = [], []
    for x in batches:
        bn(torch.from_numpy(x))
        means.append(bn.running_mean.numpy().copy())
        variances.append(bn.running_var.numpy().copy())
    return np.array(means), np.array(variances)


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


def right_update(running_mean, running_var, x, momentum):
    """Written with torch's functional batch_norm, independent of bnlib."""
    rm, rv = torch.from_numpy(running_mean.copy()), torch.from_numpy(running_var.copy())
    torch.nn.functional.batch_norm(torch.from_numpy(x), rm, rv, training=True, momentum=momentum)
    return rm.numpy(), rv.numpy()


def keras_convention(running_mean, running_var, x, momentum):
    return (momentum * running_mean + (1 - momentum) * x.mean(axis=0),
            momentum * running_var + (1 - momentum) * x.var(axis=0, ddof=1))


def biased_variance(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(axis=0),
            (1 - momentum) * running_var + momentum * x.var(axis=0))


def report(capsys, fn):
    ok = bnlib.check_running_stats_update(fn)
    return ok, capsys.readouterr().out


def test_running_stats_check_passes_a_right_update(capsys):
    ok, out = report(capsys, right_update)
    assert ok and "PASS" in out


def test_running_stats_check_names_the_keras_convention(capsys):
    ok, out = report(capsys, keras_convention)
    assert not ok and "OLD value" in out


def test_running_stats_check_names_the_biased_variance(capsys):
    ok, out = report(capsys, biased_variance)
    assert not ok and "biased batch variance" in out


def test_running_stats_check_says_not_done_yet_for_the_stub(capsys):
    def stub(running_mean, running_var, x, momentum):
        raise NotImplementedError
    ok, out = report(capsys, stub)
    assert not ok and "not done yet" in out


def test_running_stats_check_reports_a_missing_return(capsys):
    def no_return(running_mean, running_var, x, momentum):
        running_mean += momentum * x.mean(axis=0)
    ok, out = report(capsys, no_return)
    assert not ok and "tuple" in out
