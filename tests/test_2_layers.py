"""bnlib section 2, layers: BatchNorm against torch.nn.BatchNorm1d/2d (training steps, running
statistics, eval mode, backward), GroupNorm and LayerNorm layers, NoisyBatchNorm, BatchRenorm
against Batch Renormalization's algorithm written in torch, and the clear errors a layer gives
for bad input. References: PyTorch modules and autograd, closed forms."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnlib
from cases import batch, error_of, random_case
from torch_reference import torch_batch_renorm, torch_grads


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_output_dtype_follows_input_dtype(dtype):
    x, _, _, dout = random_case((8, 4), dtype=dtype)
    layer = bnlib.BatchNorm(4)
    assert layer.forward(x).dtype == dtype
    assert layer.backward(dout).dtype == dtype
    assert layer.eval().forward(x).dtype == dtype


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


# --- GroupNorm and LayerNorm layers -----------------------------------------------------------

@pytest.mark.parametrize("name", ["layer", "group"])
def test_norm_layers_compute_the_same_in_train_and_eval_mode(name):
    layer = bnlib.NORM_LAYERS[name](16, eps=1e-5, momentum=0.1)
    x, _, _, _ = batch((5, 16))
    assert np.array_equal(layer.train().forward(x), layer.eval().forward(x))


def test_groupnorm_layer_matches_torch_groupnorm_module():
    x, _, _, dout = batch((2, 8, 3, 3))
    ours, ref = bnlib.GroupNorm(8, num_groups=4), torch.nn.GroupNorm(4, 8).double()
    xt = torch.tensor(x, requires_grad=True)
    out = ref(xt)
    out.backward(torch.from_numpy(dout))
    assert np.max(np.abs(ours.forward(x) - out.detach().numpy())) < 1e-12
    assert np.max(np.abs(ours.backward(dout) - xt.grad.numpy())) < 1e-12
    assert np.max(np.abs(ours.dgamma - ref.weight.grad.numpy())) < 1e-12


def test_groupnorm_layer_refuses_groups_that_do_not_divide_the_features():
    with pytest.raises(ValueError, match="divides"):
        bnlib.GroupNorm(100, num_groups=32)


# --- NoisyBatchNorm ---------------------------------------------------------------------------

def _batch(seed=0, n=12, d=5):
    """(x, dout) of shape (n, d), x ~ N(3, 2^2)."""
    x, _, _, dout = random_case((n, d), seed, loc=3.0, scale=2.0)
    return x, dout


def test_noisy_bn_without_noise_is_torch_batch_norm():
    x, _ = _batch()
    layer = bnlib.NoisyBatchNorm(5, noise_shift=0.0, noise_gain=1.0)
    want = F.batch_norm(torch.from_numpy(x), None, None, training=True, eps=1e-5).numpy()
    assert np.max(np.abs(layer.forward(x) - want)) < 1e-12


def test_noisy_bn_output_is_gain_times_torch_batch_norm_plus_shift():
    x, _ = _batch(1)
    layer = bnlib.NoisyBatchNorm(5, noise_shift=1.5, noise_gain=3.0, seed=4)
    out = layer.forward(x)
    want = F.batch_norm(torch.from_numpy(x), None, None, training=True, eps=1e-5).numpy()
    assert np.max(np.abs(out - (want * layer.gain + layer.shift))) < 1e-12
    assert np.all(np.abs(layer.shift) <= 1.5) and np.all((layer.gain >= 1 / 3) & (layer.gain <= 3))


def test_noisy_bn_draws_new_noise_every_training_step():
    x, _ = _batch(2)
    layer = bnlib.NoisyBatchNorm(5, seed=0)
    layer.forward(x)
    first = layer.shift.copy(), layer.gain.copy()
    layer.forward(x)
    assert not np.allclose(first[0], layer.shift) and not np.allclose(first[1], layer.gain)


def test_noisy_bn_backward_matches_torch_autograd():
    x, dout = _batch(3)
    layer = bnlib.NoisyBatchNorm(5, noise_shift=1.0, noise_gain=2.0, seed=5)
    layer.gamma = np.linspace(0.5, 2.0, 5)
    layer.beta = np.linspace(-1.0, 1.0, 5)
    layer.forward(x)
    dx = layer.backward(dout)
    gain, shift = torch.from_numpy(layer.gain), torch.from_numpy(layer.shift)
    _, dx_ref, dgamma_ref, dbeta_ref = torch_grads(
        lambda a, g, b: F.batch_norm(a, None, None, g, b, training=True, eps=1e-5) * gain + shift,
        x, layer.gamma, layer.beta, dout)
    assert np.max(np.abs(dx - dx_ref)) < 1e-10
    assert np.max(np.abs(layer.dgamma - dgamma_ref)) < 1e-10
    assert np.max(np.abs(layer.dbeta - dbeta_ref)) < 1e-10


def test_noisy_bn_in_eval_mode_adds_no_noise():
    x, _ = _batch(4)
    layer = bnlib.NoisyBatchNorm(5, seed=1)
    layer.forward(x)                                   # one step of running statistics
    layer.eval()
    want = F.batch_norm(torch.from_numpy(x), torch.from_numpy(layer.running_mean),
                        torch.from_numpy(layer.running_var), training=False, eps=1e-5).numpy()
    assert np.max(np.abs(layer.forward(x) - want)) < 1e-12


def test_noisy_bn_running_statistics_match_torch_batchnorm1d():
    x, _ = _batch(5)
    layer = bnlib.NoisyBatchNorm(5, seed=1)
    ref = torch.nn.BatchNorm1d(5, dtype=torch.float64)
    for k in range(3):
        layer.forward(x + k)
        ref(torch.from_numpy(x + k))
    assert np.max(np.abs(layer.running_mean - ref.running_mean.numpy())) < 1e-12
    assert np.max(np.abs(layer.running_var - ref.running_var.numpy())) < 1e-12


def test_noisy_bn_refuses_a_gain_below_one():
    with pytest.raises(ValueError, match="noise_gain"):
        bnlib.NoisyBatchNorm(5, noise_gain=0.5)


# --- BatchRenorm (Ioffe 2017, arXiv 1702.03275) ---------------------------------------------

def _renorm_case(shape, seed):
    """A BatchRenorm layer with non-trivial gamma, beta and running statistics chosen so that
    some features' r and d fall inside their bounds and others are clipped; x and dout."""
    x, gamma, beta, dout = batch(shape, seed)
    c = shape[1]
    layer = bnlib.BatchRenorm(c, r_max=2.0, d_max=1.0)
    layer.gamma, layer.beta = gamma, beta
    # std_b of feature k is about spread_k (0.5 .. 3), its mean about 2: running std 0.2 .. 1.8
    # and running means 1.5 .. 4 put r and d on both sides of their clips
    layer.running_var = np.linspace(0.04, 3.2, c)
    layer.running_mean = np.linspace(1.5, 4.0, c)
    return layer, x, dout


@pytest.mark.parametrize("shape", [(16, 6), (4, 5, 3, 3)])
def test_batch_renorm_forward_and_backward_match_the_papers_algorithm_in_torch(shape):
    layer, x, dout = _renorm_case(shape, seed=20)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    out = layer.forward(x)
    dx = layer.backward(dout)
    out_ref, dx_ref, dgamma_ref, dbeta_ref = torch_batch_renorm(x, layer.gamma, layer.beta, dout, rm, rv,
                                                                r_max=2.0, d_max=1.0)
    clipped_r = np.isclose(layer.r, 2.0) | np.isclose(layer.r, 0.5)
    clipped_d = np.isclose(np.abs(layer.d), 1.0)
    assert clipped_r.any() and not clipped_r.all() and clipped_d.any() and not clipped_d.all()
    assert np.max(np.abs(out - out_ref)) < 1e-12
    assert np.max(np.abs(dx - dx_ref)) < 1e-10
    assert np.max(np.abs(layer.dgamma - dgamma_ref)) < 1e-10
    assert np.max(np.abs(layer.dbeta - dbeta_ref)) < 1e-10


def test_batch_renorm_unclipped_trains_on_what_eval_mode_computes():
    """Closed form: with r and d inside their bounds, x_hat * r + d = (x - running_mean) / std,
    with the running statistics from before the step."""
    x, gamma, beta, _ = batch((10, 4), seed=21)
    layer = bnlib.BatchRenorm(4, r_max=np.inf, d_max=np.inf)
    layer.gamma, layer.beta = gamma, beta
    layer.running_mean, layer.running_var = np.array([1.0, 2.0, 3.0, -1.0]), np.array([0.5, 1.0, 2.0, 4.0])
    want = gamma * (x - layer.running_mean) / np.sqrt(layer.running_var + layer.eps) + beta
    assert np.max(np.abs(layer.forward(x) - want)) < 1e-12


def test_batch_renorm_with_r_max_1_and_d_max_0_is_torch_batchnorm():
    rng = np.random.default_rng(22)
    layer, ref = bnlib.BatchRenorm(3, r_max=1.0, d_max=0.0), torch.nn.BatchNorm1d(3).double()
    for step in range(5):
        x, dout = rng.normal(1.0 + step, 2.0, size=(8, 3)), rng.normal(size=(8, 3))
        xt = torch.tensor(x, requires_grad=True)
        out_ref = ref(xt)
        out_ref.backward(torch.tensor(dout))
        assert np.max(np.abs(layer.forward(x) - out_ref.detach().numpy())) < 1e-12
        assert np.max(np.abs(layer.backward(dout) - xt.grad.numpy())) < 1e-10
        assert np.max(np.abs(layer.dgamma - ref.weight.grad.numpy())) < 1e-10
        ref.zero_grad()
    assert np.max(np.abs(layer.running_mean - ref.running_mean.numpy())) < 1e-12
    assert np.max(np.abs(layer.running_var - ref.running_var.numpy())) < 1e-12


def test_batch_renorm_keeps_torch_batchnorms_running_statistics_and_eval_mode():
    rng = np.random.default_rng(23)
    layer, ref = bnlib.BatchRenorm(4), torch.nn.BatchNorm2d(4).double()
    for step in range(6):
        x = rng.normal(2.0, 1.5, size=(3, 4, 2, 2))
        layer.forward(x)
        with torch.no_grad():
            ref(torch.tensor(x))
    assert np.max(np.abs(layer.running_mean - ref.running_mean.numpy())) < 1e-12
    assert np.max(np.abs(layer.running_var - ref.running_var.numpy())) < 1e-12
    x = rng.normal(size=(2, 4, 3, 3))
    with torch.no_grad():
        assert np.max(np.abs(layer.eval().forward(x) - ref.eval()(torch.tensor(x)).numpy())) < 1e-12


def test_mlp_builds_batch_renorm_layers_by_name():
    model = bnlib.MLP([6, 4, 3], norm="batch_renorm")
    assert isinstance(model.norms[0], bnlib.BatchRenorm) and model.linears[0].b is None


@pytest.mark.parametrize("r_max, d_max", [(0.5, 1.0), (2.0, -1.0), (True, 1.0), (np.nan, 1.0), ("3", 5)])
def test_batch_renorm_refuses_bounds_that_clip_nothing_sensible(r_max, d_max):
    assert "r_max" in error_of(bnlib.BatchRenorm, 4, r_max=r_max, d_max=d_max)


# --- bad input: clear ValueErrors -----------------------------------------------------------

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
def test_layer_refuses_eps_not_positive(eps):
    assert "eps" in error_of(bnlib.BatchNorm, 3, eps=eps)


def test_backward_before_forward_is_refused():
    assert "forward" in error_of(bnlib.BatchNorm(3).backward, np.ones((4, 3)))


# --- careless use (issue "No silent wrong answers") -----------------------------------------

@pytest.mark.parametrize("layer", [bnlib.BatchNorm(3), bnlib.NoisyBatchNorm(3), bnlib.GroupNorm(3, 1)],
                         ids=["BatchNorm", "NoisyBatchNorm", "GroupNorm"])
def test_backward_after_an_eval_forward_is_refused_not_the_last_training_gradient(layer):
    x = np.random.default_rng(0).normal(size=(6, 3))
    layer.train().forward(x)
    layer.eval().forward(x)                      # same shape: a stale cache would fit dout
    dout = np.random.default_rng(1).normal(size=(6, 3))
    if isinstance(layer, bnlib.BatchNorm):
        assert "no forward pass" in error_of(layer.backward, dout)
    else:                                          # GroupNorm: eval computes the same as train
        assert layer.backward(dout).shape == (6, 3)


def test_backward_after_a_forward_that_raised_is_refused():
    layer = bnlib.BatchNorm(3)
    layer.forward(np.random.default_rng(0).normal(size=(6, 3)))
    with pytest.raises(ValueError):
        layer.forward(np.ones((1, 3)))               # one example: refused in training mode
    assert "no forward pass" in error_of(layer.backward, np.ones((6, 3)))


def test_mlp_backward_after_an_eval_forward_is_refused():
    model = bnlib.MLP([4, 5, 3], norm="batch", dtype=np.float64)
    x = np.random.default_rng(1).normal(size=(8, 4))
    model.train().forward(x)
    model.eval().forward(x)
    assert "no forward pass" in error_of(model.backward, np.ones((8, 3)))


def test_momentum_none_is_pytorchs_cumulative_average():
    rng = np.random.default_rng(3)
    ours, theirs = bnlib.BatchNorm(4, momentum=None), torch.nn.BatchNorm1d(4, momentum=None).double()
    for _ in range(6):
        x = rng.normal(2.0, 3.0, size=(10, 4))
        ours.forward(x)
        theirs(torch.from_numpy(x))
    assert np.max(np.abs(ours.running_mean - theirs.running_mean.numpy())) < 1e-12
    assert np.max(np.abs(ours.running_var - theirs.running_var.numpy())) < 1e-12
    assert ours.num_batches_tracked == theirs.num_batches_tracked.item() == 6


@pytest.mark.parametrize("num_features", [0, 2.5, "3", True])
def test_num_features_that_is_not_a_positive_integer_is_refused(num_features):
    assert "num_features" in error_of(bnlib.BatchNorm, num_features)
