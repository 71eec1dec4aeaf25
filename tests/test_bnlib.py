"""bnlib's batch normalization, checked against references from outside bnlib:
PyTorch (functional batch_norm + autograd, BatchNorm1d/2d), centered finite
differences, and closed forms."""
import numpy as np
import pytest
import torch

import bnlib

SHAPES = [(2, 1), (3, 2), (64, 50), (2, 1, 1, 2), (4, 3, 5, 5), (8, 16, 7, 7)]


def torch_batchnorm(x, gamma, beta, dout, eps=1e-5):
    """Forward and backward through torch.nn.functional.batch_norm in training mode."""
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    out = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


def random_case(shape, seed=0, dtype=np.float64, loc=3.0, scale=2.5):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.normal(loc, scale, size=shape)).astype(dtype)
    gamma = rng.normal(1.0, 0.5, size=c).astype(dtype)
    beta = rng.normal(0.0, 1.0, size=c).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dout


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_torch_batch_norm(shape):
    x, gamma, beta, dout = random_case(shape)
    out, _ = bnlib.batchnorm_forward(x, gamma, beta)
    ref, *_ = torch_batchnorm(x, gamma, beta, dout)
    assert np.max(np.abs(out - ref)) < 1e-10


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_torch_autograd(shape):
    x, gamma, beta, dout = random_case(shape, seed=1)
    _, cache = bnlib.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnlib.batchnorm_backward(dout, cache)
    _, dx_ref, dgamma_ref, dbeta_ref = torch_batchnorm(x, gamma, beta, dout)
    assert np.max(np.abs(dx - dx_ref)) < 1e-10
    assert np.max(np.abs(dgamma - dgamma_ref)) < 1e-10
    assert np.max(np.abs(dbeta - dbeta_ref)) < 1e-10


@pytest.mark.parametrize("shape", SHAPES)
def test_step_by_step_backward_matches_torch_autograd(shape):
    x, gamma, beta, dout = random_case(shape, seed=2)
    _, cache = bnlib.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = bnlib.batchnorm_backward_steps(dout, cache)
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


def test_numerical_gradient_matches_closed_form_of_a_cube():
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    dout = np.array([[1.0, 2.0], [-1.0, 0.5]])
    grad = bnlib.numerical_gradient(lambda v: v**3, x, dout)
    assert np.max(np.abs(grad - 3 * x**2 * dout)) < 1e-8


def test_rel_error_follows_its_formula():
    assert bnlib.rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert bnlib.rel_error([1.0], [3.0]) == pytest.approx(0.5)
    assert bnlib.rel_error([0.0], [1e-9]) == pytest.approx(0.1)  # floor of 1e-8 in the denominator


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
    layer = bnlib.BatchNorm(4)
    assert layer.forward(x).dtype == dtype
    assert layer.backward(dout).dtype == dtype
    assert layer.eval().forward(x).dtype == dtype


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


# --- the BatchNorm layer against torch.nn.BatchNorm1d / BatchNorm2d --------------------------

@pytest.mark.parametrize("shape, torch_layer", [
    ((32, 10), torch.nn.BatchNorm1d),
    ((3, 4), torch.nn.BatchNorm1d),
    ((6, 5, 4, 4), torch.nn.BatchNorm2d),
    ((2, 3, 1, 2), torch.nn.BatchNorm2d),
])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_layer_matches_torch_over_50_training_steps_then_eval(shape, torch_layer, momentum):
    rng = np.random.default_rng(8)
    c = shape[1]
    ours = bnlib.BatchNorm(c, momentum=momentum)
    ref = torch_layer(c, momentum=momentum).double()
    gamma, beta = rng.normal(1, 0.3, size=c), rng.normal(0, 1, size=c)
    ours.gamma, ours.beta = gamma.copy(), beta.copy()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(gamma))
        ref.bias.copy_(torch.tensor(beta))
    for step in range(50):
        x = rng.normal(2.0 + 0.05 * step, 1.5, size=shape)  # the data drifts
        out = ours.forward(x)
        with torch.no_grad():
            out_ref = ref(torch.tensor(x)).numpy()
        assert np.max(np.abs(out - out_ref)) < 1e-10
    np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=0, atol=1e-12)
    ours.eval()
    ref.eval()
    x = rng.normal(size=shape)
    with torch.no_grad():
        assert np.max(np.abs(ours.forward(x) - ref(torch.tensor(x)).numpy())) < 1e-10


def test_layer_backward_matches_torch_autograd():
    rng = np.random.default_rng(9)
    x, dout = rng.normal(size=(6, 3, 4, 4)), rng.normal(size=(6, 3, 4, 4))
    ours = bnlib.BatchNorm(3)
    ours.forward(x)
    dx = ours.backward(dout)
    ref = torch.nn.BatchNorm2d(3).double()
    xt = torch.tensor(x, requires_grad=True)
    ref(xt).backward(torch.tensor(dout))
    assert np.max(np.abs(dx - xt.grad.numpy())) < 1e-10
    assert np.max(np.abs(ours.dgamma - ref.weight.grad.numpy())) < 1e-10
    assert np.max(np.abs(ours.dbeta - ref.bias.grad.numpy())) < 1e-10


def test_running_var_uses_unbiased_batch_variance():
    x = np.array([[1.0], [2.0], [6.0]])             # biased var 14/3, unbiased 7
    layer = bnlib.BatchNorm(1, momentum=1.0)
    layer.forward(x)
    assert layer.running_mean[0] == pytest.approx(3.0)
    assert layer.running_var[0] == pytest.approx(7.0)


@pytest.mark.parametrize("momentum", [0.1, 0.01, 0.5])
def test_running_mean_follows_closed_form_for_a_constant_batch_mean(momentum):
    mu = 3.0
    x = mu + np.array([[-1.0], [1.0]])               # batch mean exactly mu every step
    layer = bnlib.BatchNorm(1, momentum=momentum)
    for k in range(1, 41):
        layer.forward(x)
        assert layer.running_mean[0] == pytest.approx((1 - (1 - momentum) ** k) * mu, rel=1e-12)


def test_eval_mode_changes_no_running_statistic():
    layer = bnlib.BatchNorm(2)
    layer.forward(np.random.default_rng(0).normal(size=(8, 2)))
    before = layer.running_mean.copy(), layer.running_var.copy()
    layer.eval().forward(np.random.default_rng(1).normal(5, 3, size=(8, 2)))
    assert np.array_equal(layer.running_mean, before[0]) and np.array_equal(layer.running_var, before[1])


def test_eval_mode_accepts_a_batch_of_one():
    layer = bnlib.BatchNorm(3).eval()
    out = layer.forward(np.array([[1.0, 2.0, 3.0]]))
    assert out.shape == (1, 3)


def test_conv_batch_of_one_image_trains_when_it_has_several_positions():
    layer = bnlib.BatchNorm(2)
    out = layer.forward(np.random.default_rng(2).normal(size=(1, 2, 3, 3)))
    assert out.shape == (1, 2, 3, 3)


# --- bad input: clear ValueErrors ----------------------------------------------------------

def error_of(fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


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


def test_layer_refuses_a_different_feature_count():
    msg = error_of(bnlib.BatchNorm(5).forward, np.ones((4, 3)))
    assert "5 features" in msg and "BatchNorm(3)" in msg


@pytest.mark.parametrize("shape", [(1, 4), (1, 2, 1, 1)])
def test_training_with_one_value_per_channel_is_refused_as_pytorch_does(shape):
    msg = error_of(bnlib.BatchNorm(shape[1]).forward, np.ones(shape))
    assert "Expected more than 1 value per channel when training" in msg
    assert "eval" in msg and "larger" in msg
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        torch.nn.functional.batch_norm(torch.ones(shape), None, None, training=True)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, 0.99 + 1])
def test_momentum_outside_0_1_is_refused(momentum):
    assert "momentum" in error_of(bnlib.BatchNorm, 3, momentum=momentum)


@pytest.mark.parametrize("eps", [0.0, -1e-5])
def test_eps_not_positive_is_refused(eps):
    assert "eps" in error_of(bnlib.BatchNorm, 3, eps=eps)
    assert "eps" in error_of(bnlib.batchnorm_forward, np.ones((4, 3)), np.ones(3), np.zeros(3), eps=eps)


def test_nan_input_is_refused():
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    assert "NaN" in error_of(bnlib.batchnorm_forward, x, np.ones(3), np.zeros(3))


def test_backward_with_wrong_dout_shape_is_refused():
    _, cache = bnlib.batchnorm_forward(np.random.default_rng(0).normal(size=(4, 3)), np.ones(3), np.zeros(3))
    assert "dout" in error_of(bnlib.batchnorm_backward, np.ones((3, 4)), cache)


def test_backward_before_forward_is_refused():
    assert "forward" in error_of(bnlib.BatchNorm(3).backward, np.ones((4, 3)))


# --- exercise checks ------------------------------------------------------------------------

def test_run_check_reports_a_stub_as_not_done(capsys):
    def stub():
        raise NotImplementedError
    assert not bnlib.run_check("Exercise", stub)
    assert "not done yet" in capsys.readouterr().out


def test_verdicts_are_booleans_that_display_nothing(capsys):
    assert bnlib.compare("same", [1.0], [1.0]) and not bnlib.compare("far", [1.0], [2.0])
    assert bnlib.run_check("Exercise", lambda: None)
    assert bnlib.Verdict(True)._ipython_display_() is None


def test_run_check_reports_a_crash_in_one_line(capsys):
    def crashes():
        return [1][2]
    bnlib.run_check("Exercise", crashes)
    assert capsys.readouterr().out.strip() == "Exercise: your code raised IndexError: list index out of range"


def test_expect_array_says_where_an_answer_is_wrong():
    with pytest.raises(bnlib.CheckFailed, match=r"index \(1,\)"):
        bnlib.expect_array("mu", np.array([1.0, 5.0]), np.array([1.0, 2.0]))
    with pytest.raises(bnlib.CheckFailed, match="forget to `return`"):
        bnlib.expect_array("mu", None, np.array([1.0]))
