"""Notebook 05's additions to bnlib: per-channel statistics and the exercise checks.
References come from PyTorch, not from bnlib."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnlib


def conv_activations(shape=(3, 4, 5, 6), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * np.arange(1, shape[1] + 1).reshape(1, -1, 1, 1) + 3.0


def test_channel_mean_std_is_over_batch_height_and_width():
    x = conv_activations()
    var, mean = torch.var_mean(torch.from_numpy(x), dim=(0, 2, 3), unbiased=False)
    mu, std = bnlib.channel_mean_std(x)
    assert mu.shape == std.shape == (4,)
    assert np.allclose(mu, mean.numpy(), atol=1e-12)
    assert np.allclose(std, np.sqrt(var.numpy()), atol=1e-12)


def test_channel_mean_std_of_a_2d_array_is_per_column():
    x = conv_activations()[:, :, 0, 0]
    var, mean = torch.var_mean(torch.from_numpy(x), dim=0, unbiased=False)
    mu, std = bnlib.channel_mean_std(x)
    assert np.allclose(mu, mean.numpy(), atol=1e-12)
    assert np.allclose(std, np.sqrt(var.numpy()), atol=1e-12)


def test_channel_mean_std_rejects_a_3d_array():
    with pytest.raises(ValueError, match="4-D"):
        bnlib.channel_mean_std(np.zeros((2, 3, 4)))


def test_bnlib_4d_forward_equals_the_reshape_to_2d():
    x = conv_activations()
    n, c, h, w = x.shape
    gamma, beta = np.linspace(0.5, 2, c), np.linspace(-1, 1, c)
    out2d, _ = bnlib.batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, c), gamma, beta)
    ref = F.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                       torch.from_numpy(beta), training=True).numpy()
    assert np.abs(out2d.reshape(n, h, w, c).transpose(0, 3, 1, 2) - ref).max() < 1e-12


def right_nhwc(x, gamma, beta, eps=1e-5):
    n, h, w, c = x.shape
    out, _ = bnlib.batchnorm_forward(x.reshape(-1, c), gamma, beta, eps)
    return out.reshape(n, h, w, c)


def test_check_batchnorm_nhwc_passes_a_right_answer(capsys):
    assert bnlib.check_batchnorm_nhwc(right_nhwc)
    assert "PASS" in capsys.readouterr().out


def test_check_batchnorm_nhwc_reports_statistics_over_the_wrong_axes(capsys):
    def wrong(x, gamma, beta, eps=1e-5):   # treats the array as if it were (N, C, H, W)
        mu = x.mean(axis=(0, 2, 3), keepdims=True)
        return (x - mu) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps) * gamma + beta
    assert not bnlib.check_batchnorm_nhwc(wrong)
    assert "is off by up to" in capsys.readouterr().out


def test_check_batchnorm_nhwc_names_the_unbiased_variance(capsys):
    def wrong(x, gamma, beta, eps=1e-5):
        mu, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2), ddof=1)
        return (x - mu) / np.sqrt(var + eps) * gamma + beta
    assert not bnlib.check_batchnorm_nhwc(wrong)
    assert "unbiased" in capsys.readouterr().out


def test_check_batchnorm_nhwc_says_not_done_yet_for_the_stub(capsys):
    def stub(x, gamma, beta, eps=1e-5):
        raise NotImplementedError
    assert not bnlib.check_batchnorm_nhwc(stub)
    assert "not done yet" in capsys.readouterr().out


def right_backward(dout, x, gamma, beta, eps=1e-5):
    n, c, h, w = x.shape
    _, cache = bnlib.batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, c), gamma, beta, eps)
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout.transpose(0, 2, 3, 1).reshape(-1, c), cache)
    return dx.reshape(n, h, w, c).transpose(0, 3, 1, 2), dgamma, dbeta


def test_check_spatial_backward_passes_a_right_answer(capsys):
    assert bnlib.check_spatial_batchnorm_backward(right_backward)
    assert "PASS" in capsys.readouterr().out


def test_check_spatial_backward_reports_dx_reshaped_without_transposing(capsys):
    def wrong(dout, x, gamma, beta, eps=1e-5):
        dx, dgamma, dbeta = right_backward(dout, x, gamma, beta, eps)
        n, c, h, w = x.shape
        return dx.transpose(0, 2, 3, 1).reshape(n, c, h, w), dgamma, dbeta
    assert not bnlib.check_spatial_batchnorm_backward(wrong)
    assert "dx for x of shape" in capsys.readouterr().out


def test_check_spatial_backward_asks_for_three_gradients(capsys):
    def wrong(dout, x, gamma, beta, eps=1e-5):
        return right_backward(dout, x, gamma, beta, eps)[0]
    assert not bnlib.check_spatial_batchnorm_backward(wrong)
    assert "(dx, dgamma, dbeta)" in capsys.readouterr().out
