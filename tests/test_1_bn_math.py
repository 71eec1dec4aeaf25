"""bnlib section 1, the math of batch normalization: BN forward, backward (compact and step by
step), 4-D BN and per-channel statistics, LayerNorm and GroupNorm functions, folding BN into
the layer before it, and the clear errors these functions give for bad input.
References from outside bnlib: PyTorch (functional ops, autograd, fuse_*_bn_eval), centered
finite differences, and closed forms."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import bnlib
from cases import batch, error_of, random_case
from torch_reference import torch_batchnorm, torch_grads, torch_linear_bn

SHAPES = [(2, 1), (3, 2), (64, 50), (2, 1, 1, 2), (4, 3, 5, 5), (8, 16, 7, 7)]


# --- BN forward and backward ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_torch_batch_norm(shape):
    x, gamma, beta, dout = random_case(shape)
    out, _ = bnlib.batchnorm_forward(x, gamma, beta)
    ref, *_ = torch_batchnorm(x, gamma, beta, dout)
    assert np.max(np.abs(out - ref)) < 1e-10


@pytest.mark.parametrize("backward, seed", [(bnlib.batchnorm_backward, 1), (bnlib.batchnorm_backward_steps, 2)],
                         ids=["compact", "step_by_step"])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_torch_autograd(shape, backward, seed):
    x, gamma, beta, dout = random_case(shape, seed=seed)
    _, cache = bnlib.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = backward(dout, cache)
    _, dx_ref, dgamma_ref, dbeta_ref = torch_batchnorm(x, gamma, beta, dout)
    assert np.max(np.abs(dx - dx_ref)) < 1e-10
    assert np.max(np.abs(dgamma - dgamma_ref)) < 1e-10
    assert np.max(np.abs(dbeta - dbeta_ref)) < 1e-10


@pytest.mark.parametrize("shape", SHAPES)
def test_step_by_step_and_compact_backward_agree(shape):
    x, gamma, beta, dout = random_case(shape, seed=3)
    _, cache = bnlib.batchnorm_forward(x, gamma, beta)
    compact = bnlib.batchnorm_backward(dout, cache)
    steps = bnlib.batchnorm_backward_steps(dout, cache)
    for a, b in zip(compact, steps):
        assert np.max(np.abs(a - b)) < 1e-10


@pytest.mark.parametrize("shape", [(5, 3), (4, 3), (3, 2, 2, 2)])
def test_backward_matches_finite_differences(shape):
    # unit-scale x: finite differences carry ~1e-11 absolute rounding error, so the
    # elementwise relative error means something only where gradients are not tiny
    x, gamma, beta, dout = random_case(shape, seed=4, loc=0.0, scale=1.0)
    _, cache = bnlib.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    dx_num = bnlib.numerical_gradient(lambda v: bnlib.batchnorm_forward(v, gamma, beta)[0], x, dout)
    dgamma_num = bnlib.numerical_gradient(lambda g: bnlib.batchnorm_forward(x, g, beta)[0], gamma, dout)
    dbeta_num = bnlib.numerical_gradient(lambda b: bnlib.batchnorm_forward(x, gamma, b)[0], beta, dout)
    assert bnlib.rel_error(dx, dx_num) < 1e-8
    assert bnlib.rel_error(dgamma, dgamma_num) < 1e-8
    assert bnlib.rel_error(dbeta, dbeta_num) < 1e-8


def test_forward_check_from_the_syllabus_gamma_123_beta_111213():
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(200, 3))
    out, _ = bnlib.batchnorm_forward(x, np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0]))
    np.testing.assert_allclose(out.mean(axis=0), [11, 12, 13], atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), [1, 2, 3], rtol=1e-5)


def test_gamma_sqrt_var_eps_and_beta_mean_give_back_the_input():
    x = np.random.default_rng(1).normal(4.0, 2.0, size=(64, 5))
    eps = 1e-5
    out, _ = bnlib.batchnorm_forward(x, np.sqrt(x.var(axis=0) + eps), x.mean(axis=0), eps=eps)
    assert np.max(np.abs(out - x)) < 1e-13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_follows_input_dtype(dtype):
    x, gamma, beta, dout = random_case((8, 4), dtype=dtype)
    out, cache = bnlib.batchnorm_forward(x, gamma.astype(np.float64), beta.astype(np.float64))
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    assert out.dtype == dx.dtype == dgamma.dtype == dbeta.dtype == dtype


def test_float32_with_large_offset_and_tiny_spread_stays_accurate():
    rng = np.random.default_rng(5)
    x32 = (1e4 + rng.normal(0.0, 1.0, size=(256, 4))).astype(np.float32)
    ones, zeros = np.ones(4), np.zeros(4)
    out32, _ = bnlib.batchnorm_forward(x32, ones, zeros)
    ref = torch.nn.functional.batch_norm(torch.tensor(x32, dtype=torch.float64), None, None,
                                         training=True).numpy()
    assert np.max(np.abs(out32 - ref)) < 1e-2
    # the one-pass formula E[x^2] - E[x]^2 loses everything here; two passes must not
    assert np.allclose(out32.std(axis=0), 1.0, atol=1e-2)


def test_zero_variance_column_gives_beta_and_finite_gradient():
    x = np.random.default_rng(6).normal(size=(16, 3))
    x[:, 1] = 7.0
    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([0.5, -4.0, 1.0])
    out, cache = bnlib.batchnorm_forward(x, gamma, beta)
    assert np.all(out[:, 1] == -4.0)
    dout = np.random.default_rng(7).normal(size=x.shape)
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dgamma))
    # the constant column's gradient: gamma / sqrt(eps) * (dout - mean(dout)), as autograd says
    _, dx_ref, _, _ = torch_batchnorm(x, gamma, beta, dout)
    assert np.max(np.abs(dx - dx_ref)) < 1e-8
    assert np.max(np.abs(dx[:, 1])) > 100  # amplified by about 1/sqrt(eps) ~ 316


# --- 4-D BN and per-channel statistics -------------------------------------------------------

def test_channel_mean_std_is_over_batch_height_and_width():
    x = batch((3, 4, 5, 6))[0]
    var, mean = torch.var_mean(torch.from_numpy(x), dim=(0, 2, 3), unbiased=False)
    mu, std = bnlib.channel_mean_std(x)
    assert mu.shape == std.shape == (4,)
    assert np.allclose(mu, mean.numpy(), atol=1e-12)
    assert np.allclose(std, np.sqrt(var.numpy()), atol=1e-12)


def test_channel_mean_std_of_a_2d_array_is_per_column():
    x = batch((3, 4, 5, 6))[0][:, :, 0, 0]
    var, mean = torch.var_mean(torch.from_numpy(x), dim=0, unbiased=False)
    mu, std = bnlib.channel_mean_std(x)
    assert np.allclose(mu, mean.numpy(), atol=1e-12)
    assert np.allclose(std, np.sqrt(var.numpy()), atol=1e-12)


def test_channel_mean_std_rejects_a_3d_array():
    with pytest.raises(ValueError, match="4-D"):
        bnlib.channel_mean_std(np.zeros((2, 3, 4)))


def test_bnlib_4d_forward_equals_the_reshape_to_2d():
    x = batch((3, 4, 5, 6))[0]
    n, c, h, w = x.shape
    gamma, beta = np.linspace(0.5, 2, c), np.linspace(-1, 1, c)
    out2d, _ = bnlib.batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, c), gamma, beta)
    ref = F.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                       torch.from_numpy(beta), training=True).numpy()
    assert np.abs(out2d.reshape(n, h, w, c).transpose(0, 3, 1, 2) - ref).max() < 1e-12


# --- LayerNorm and GroupNorm: forward and backward --------------------------------------------

def test_layernorm_matches_torch_layer_norm_forward_and_backward():
    x, gamma, beta, dout = batch((6, 10))
    ref = torch_grads(lambda a, g, b: F.layer_norm(a, (10,), g, b, eps=1e-5), x, gamma, beta, dout)
    out, cache = bnlib.layernorm_forward(x, gamma, beta)
    for ours, theirs in zip((out,) + bnlib.layernorm_backward(dout, cache), ref):
        assert np.max(np.abs(ours - theirs)) < 1e-12


@pytest.mark.parametrize("shape, groups", [((5, 12), 3), ((5, 12), 12), ((3, 6, 4, 5), 2), ((2, 4, 3, 3), 1)])
def test_groupnorm_matches_torch_group_norm_forward_and_backward(shape, groups):
    x, gamma, beta, dout = batch(shape, seed=groups)
    view = (lambda a: a[:, :, None]) if len(shape) == 2 else (lambda a: a)
    unview = (lambda a: a[:, :, 0]) if len(shape) == 2 else (lambda a: a)
    ref = torch_grads(lambda a, g, b: unview(F.group_norm(view(a), groups, g, b, eps=1e-5)),
                      x, gamma, beta, dout)
    out, cache = bnlib.groupnorm_forward(x, gamma, beta, groups)
    for ours, theirs in zip((out,) + bnlib.groupnorm_backward(dout, cache), ref):
        assert np.max(np.abs(ours - theirs)) < 1e-12


def test_layernorm_of_4d_input_is_torch_groupnorm_with_one_group():
    x, gamma, beta, _ = batch((3, 4, 2, 5))
    ref = F.group_norm(torch.from_numpy(x), 1, torch.from_numpy(gamma), torch.from_numpy(beta))
    assert np.max(np.abs(bnlib.layernorm_forward(x, gamma, beta)[0] - ref.numpy())) < 1e-12


def test_groupnorm_dx_matches_finite_differences():
    x, gamma, beta, dout = batch((3, 8), seed=4)
    dx, _, _ = bnlib.groupnorm_backward(dout, bnlib.groupnorm_forward(x, gamma, beta, 2)[1])
    numeric = bnlib.numerical_gradient(lambda a: bnlib.groupnorm_forward(a, gamma, beta, 2)[0],
                                       x.copy(), dout, h=1e-6)
    assert np.max(np.abs(dx - numeric) / np.maximum(1e-8, np.abs(dx) + np.abs(numeric))) < 1e-6


def test_groupnorm_output_of_an_example_does_not_depend_on_its_batchmates():
    x, gamma, beta, _ = batch((8, 12))
    alone = bnlib.groupnorm_forward(x[:1], gamma, beta, 4)[0]
    in_batch = bnlib.groupnorm_forward(x, gamma, beta, 4)[0][:1]
    assert np.array_equal(alone, in_batch)


def test_groupnorm_refuses_groups_that_do_not_divide_the_features():
    x, gamma, beta, _ = batch((4, 10))
    with pytest.raises(ValueError, match="divides"):
        bnlib.groupnorm_forward(x, gamma, beta, 3)


def test_groupnorm_refuses_wrong_gamma_shape_and_3d_input():
    x, gamma, beta, _ = batch((4, 10))
    with pytest.raises(ValueError, match="gamma"):
        bnlib.groupnorm_forward(x, gamma[:5], beta, 2)
    with pytest.raises(ValueError, match="2-D"):
        bnlib.layernorm_forward(x[:, :, None], gamma, beta)


# --- folding BN into the layer before it ------------------------------------------------------

def bn_params(n, seed):
    rng = np.random.default_rng(seed)
    return 0.5 + rng.random(n), rng.standard_normal(n), rng.standard_normal(n), 0.1 + rng.random(n)


def test_folded_linear_equals_linear_then_eval_batchnorm_in_torch():
    rng = np.random.default_rng(0)
    W, b, x = rng.standard_normal((7, 5)), rng.standard_normal(5), rng.standard_normal((9, 7))
    gamma, beta, mean, var = bn_params(5, 1)
    linear, bn = torch_linear_bn(W, b, gamma, beta, mean, var, 1e-3)
    W_f, b_f = bnlib.fold_batchnorm(W, b, gamma, beta, mean, var, eps=1e-3)
    unfused = bn(linear(torch.from_numpy(x))).detach().numpy()
    assert np.max(np.abs(x @ W_f + b_f - unfused)) < 1e-13
    fused = fuse_linear_bn_eval(linear, bn)
    assert np.max(np.abs(W_f - fused.weight.detach().numpy().T)) < 1e-13
    assert np.max(np.abs(b_f - fused.bias.detach().numpy())) < 1e-13


def test_folded_conv_matches_torch_fuse_conv_bn_eval():
    conv = torch.nn.Conv2d(3, 4, 3, bias=True).double().eval()
    bn = torch.nn.BatchNorm2d(4).double().eval()
    gamma, beta, mean, var = bn_params(4, 2)
    with torch.no_grad():
        for t, a in ((bn.weight, gamma), (bn.bias, beta), (bn.running_mean, mean), (bn.running_var, var)):
            t.copy_(torch.from_numpy(a))
    W, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    W_f, b_f = bnlib.fold_batchnorm(W, b, gamma, beta, mean, var, eps=bn.eps)
    fused = fuse_conv_bn_eval(conv, bn)
    assert np.max(np.abs(W_f - fused.weight.detach().numpy())) < 1e-13
    assert np.max(np.abs(b_f - fused.bias.detach().numpy())) < 1e-13


def test_fold_without_bias_treats_it_as_zero():
    W = np.random.default_rng(3).standard_normal((4, 3))
    gamma, beta, mean, var = bn_params(3, 3)
    W_f, b_f = bnlib.fold_batchnorm(W, None, gamma, beta, mean, var)
    assert np.allclose(b_f, beta - mean * gamma / np.sqrt(var + 1e-5), atol=1e-14, rtol=0)


def test_fold_refuses_torch_linear_layout():
    gamma, beta, mean, var = bn_params(3, 0)
    with pytest.raises(ValueError, match="fan_in, fan_out"):
        bnlib.fold_batchnorm(np.ones((3, 5)), None, gamma, beta, mean, var)


# --- bad input: clear ValueErrors -----------------------------------------------------------

@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 2, 3, 4, 5)])
def test_x_that_is_not_2d_or_4d_is_refused(shape):
    msg = error_of(bnlib.batchnorm_forward, np.ones(shape), np.ones(shape[-1]), np.zeros(shape[-1]))
    assert "2-D (N, D) or 4-D (N, C, H, W)" in msg and str(shape) in msg


def test_gamma_of_wrong_shape_is_named():
    msg = error_of(bnlib.batchnorm_forward, np.ones((4, 3)), np.ones(2), np.zeros(3))
    assert "gamma" in msg and "(3,)" in msg


def test_beta_of_wrong_shape_is_named():
    msg = error_of(bnlib.batchnorm_forward, np.ones((4, 3)), np.ones(3), np.zeros((3, 1)))
    assert "beta" in msg and "(3,)" in msg


@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_eps_not_positive_is_refused(eps):
    assert "eps" in error_of(bnlib.batchnorm_forward, np.ones((4, 3)), np.ones(3), np.zeros(3), eps=eps)


def test_nan_input_is_refused():
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    assert "NaN" in error_of(bnlib.batchnorm_forward, x, np.ones(3), np.zeros(3))


def test_backward_with_wrong_dout_shape_is_refused():
    _, cache = bnlib.batchnorm_forward(np.random.default_rng(0).normal(size=(4, 3)), np.ones(3), np.zeros(3))
    assert "dout" in error_of(bnlib.batchnorm_backward, np.ones((3, 4)), cache)


# --- careless inputs (issue "No silent wrong answers") --------------------------------------

def test_float16_input_is_refused_instead_of_overflowing_to_inf():
    x = np.random.default_rng(0).normal(0, 400, size=(8, 3)).astype(np.float16)   # squares > 65504
    with pytest.raises(TypeError, match="float16.*float32"):
        bnlib.batchnorm_forward(x, np.ones(3), np.zeros(3))


def test_an_empty_batch_is_called_empty_not_nan():
    msg = error_of(bnlib.batchnorm_forward, np.ones((0, 3)), np.ones(3), np.zeros(3))
    assert "empty" in msg and "NaN" not in msg


def test_backward_given_out_and_cache_says_pass_the_cache_alone():
    x, gamma, beta, dout = random_case((4, 3))
    with pytest.raises(TypeError, match="cache alone"):
        bnlib.batchnorm_backward(dout, bnlib.batchnorm_forward(x, gamma, beta))


@pytest.mark.parametrize("backward", [bnlib.batchnorm_backward, bnlib.batchnorm_backward_steps])
def test_backward_refuses_a_cache_that_is_not_batchnorm_forwards(backward):
    with pytest.raises(TypeError, match="cache"):
        backward(np.ones((4, 3)), {"x_hat": np.ones((4, 3))})


def test_lists_and_ints_give_the_same_output_as_float_arrays():
    x = [[1, 2], [3, 5], [4, 9]]
    out_list, _ = bnlib.batchnorm_forward(x, [1, 1], [0, 0])
    out_array, _ = bnlib.batchnorm_forward(np.array(x, dtype=np.float64), np.ones(2), np.zeros(2))
    assert out_list.dtype == np.float64 and np.array_equal(out_list, out_array)


def test_strings_are_refused_as_not_numbers():
    with pytest.raises(TypeError, match="real numbers"):
        bnlib.batchnorm_forward(np.array([["a", "b"], ["c", "d"]]), np.ones(2), np.zeros(2))


def test_inference_refuses_a_negative_variance():
    msg = error_of(bnlib.batchnorm_inference, np.ones((2, 2)), np.ones(2), np.zeros(2),
                   np.zeros(2), np.array([1.0, -1.0]))
    assert "var" in msg and "negative" in msg
