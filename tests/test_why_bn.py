"""bnlib's additions for notebook 06 (why BN works): batch noise, noisy BN, the loss along
the gradient, and the exercise check. References: PyTorch and closed forms."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnlib
from torch_reference import mlp_loss, mlp_params


# --- x_hat_in_random_batches -------------------------------------------------------------

def test_batch_of_two_gives_plus_or_minus_d_over_sqrt_d2_plus_eps():
    x = np.random.default_rng(0).normal(size=50)
    got = bnlib.x_hat_in_random_batches(x, 3, batch_size=2, n_batches=200, eps=1e-5)
    d = np.abs(x[3] - np.delete(x, 3)) / 2          # every possible batchmate
    allowed = d / np.sqrt(d**2 + 1e-5)              # closed form of |x_hat| for m = 2
    assert np.all(np.min(np.abs(np.abs(got)[:, None] - allowed[None, :]), axis=1) < 1e-12)


def test_spread_over_batches_matches_torch_batch_norm_on_independent_draws():
    # the same experiment done independently: torch draws the batchmates, F.batch_norm normalizes
    x = np.random.default_rng(1).standard_normal(5_000)
    xt = torch.from_numpy(x)
    gen = torch.Generator().manual_seed(0)
    for m in (4, 16, 64):
        got = bnlib.x_hat_in_random_batches(x, 7, batch_size=m, n_batches=20_000, seed=2)
        mates = xt[torch.cat([torch.arange(7), torch.arange(8, len(x))])]
        batches = torch.cat([xt[7].expand(20_000, 1),
                             mates[torch.randint(0, len(mates), (20_000, m - 1), generator=gen)]], dim=1)
        want = F.batch_norm(batches.T, None, None, training=True, eps=1e-5)[0]   # (m, n): one batch a column
        assert abs(got.std() / want.std().item() - 1) < 0.03, m
        assert abs(got.mean() - want.mean().item()) < 0.02, m


def test_random_batches_match_torch_batch_norm_on_a_two_value_feature():
    # a feature with only values 0 and 1: the example's x_hat depends only on how many 1s it meets
    x = np.array([1.0] + [0.0, 1.0] * 20)
    got = bnlib.x_hat_in_random_batches(x, 0, batch_size=5, n_batches=300, eps=1e-5)
    possible = [F.batch_norm(torch.tensor([[1.0]] + [[1.0]] * k + [[0.0]] * (4 - k), dtype=torch.float64),
                             None, None, training=True, eps=1e-5)[0, 0].item() for k in range(5)]
    assert np.all(np.min(np.abs(got[:, None] - np.array(possible)[None, :]), axis=1) < 1e-12)


def test_random_batches_refuse_a_batch_of_one():
    with pytest.raises(ValueError, match="batch_size"):
        bnlib.x_hat_in_random_batches(np.arange(10.0), 0, batch_size=1, n_batches=5)


# --- NoisyBatchNorm --------------------------------------------------------------------

def _batch(seed=0, n=12, d=5):
    rng = np.random.default_rng(seed)
    return rng.normal(3.0, 2.0, size=(n, d)), rng.normal(size=(n, d))


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
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, layer.gamma, layer.beta))
    out = F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
    (out * torch.from_numpy(layer.gain) + torch.from_numpy(layer.shift)).backward(torch.from_numpy(dout))
    assert np.max(np.abs(dx - xt.grad.numpy())) < 1e-10
    assert np.max(np.abs(layer.dgamma - gt.grad.numpy())) < 1e-10
    assert np.max(np.abs(layer.dbeta - bt.grad.numpy())) < 1e-10


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


def test_mlp_builds_noisy_bn_layers_by_name():
    model = bnlib.MLP([6, 4, 4, 3], activation="sigmoid", norm="noisy_batch")
    assert len(model.norms) == 2 and all(isinstance(l, bnlib.NoisyBatchNorm) for l in model.norms)
    assert model.linears[0].b is None


# --- loss_along_gradient ---------------------------------------------------------------

@pytest.mark.parametrize("norm", [None, "batch"])
def test_loss_along_gradient_matches_torch(norm):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 8)), rng.integers(0, 3, size=20)
    model = bnlib.MLP([8, 6, 6, 3], activation="relu", norm=norm, seed=2, dtype=np.float64)
    params = mlp_params(model)
    mlp_loss(params, model, x, y).backward()
    steps = np.array([0.0, 0.1, 0.5, 2.0])
    with torch.no_grad():
        want = [mlp_loss({k: p - eta * p.grad for k, p in params.items()}, model, x, y).item()
                for eta in steps]
    got = bnlib.loss_along_gradient(model, x, y, steps)
    assert np.max(np.abs(got - np.array(want))) < 1e-10


def test_loss_along_gradient_leaves_the_model_unchanged():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 8)), rng.integers(0, 3, size=16)
    model = bnlib.MLP([8, 6, 3], activation="sigmoid", norm="batch", seed=0, dtype=np.float64)
    model.eval()
    before = [p.copy() for _, p, _ in model.parameters()]
    stats = (model.norms[0].running_mean.copy(), model.norms[0].running_var.copy())
    bnlib.loss_along_gradient(model, x, y, [0.5, 1.0, 5.0])
    assert all(np.array_equal(a, p) for a, (_, p, _) in zip(before, model.parameters()))
    assert np.array_equal(stats[0], model.norms[0].running_mean)
    assert np.array_equal(stats[1], model.norms[0].running_var)
    assert not model.norms[0].training


def test_loss_along_gradient_refuses_a_2d_step_array():
    model = bnlib.MLP([4, 3, 2], seed=0)
    with pytest.raises(ValueError, match="step_sizes"):
        bnlib.loss_along_gradient(model, np.zeros((3, 4)), np.zeros(3, dtype=int), np.ones((2, 2)))


# --- the exercise check -----------------------------------------------------------------

def test_check_passes_on_a_right_answer(capsys):
    def right(value, mates, eps):
        batch = torch.tensor(np.concatenate([[value], mates]))
        return ((batch[0] - batch.mean()) / torch.sqrt(batch.var(unbiased=False) + eps)).item()
    assert bnlib.check_x_hat_of_example(right)
    assert "PASS" in capsys.readouterr().out


def test_check_reports_statistics_without_the_example(capsys):
    assert not bnlib.check_x_hat_of_example(lambda v, m, eps: (v - m.mean()) / np.sqrt(m.var() + eps))
    assert "without the example itself" in capsys.readouterr().out


def test_check_reports_the_unbiased_variance(capsys):
    def unbiased(v, m, eps):
        b = np.concatenate([[v], m])
        return (v - b.mean()) / np.sqrt(b.var(ddof=1) + eps)
    assert not bnlib.check_x_hat_of_example(unbiased)
    assert "unbiased variance" in capsys.readouterr().out


def test_check_says_not_done_for_the_stub(capsys):
    def stub(v, m, eps):
        raise NotImplementedError
    assert not bnlib.check_x_hat_of_example(stub)
    assert "not done yet" in capsys.readouterr().out


def test_mlp_gives_each_noisy_bn_layer_its_own_noise():
    model = bnlib.MLP([20, 8, 8, 8, 3], activation="relu", norm="noisy_batch", seed=0)
    x = np.random.default_rng(0).standard_normal((16, 20))
    model(x)
    gains = [layer.gain for layer in model.norms]
    assert not np.allclose(gains[0], gains[1]) and not np.allclose(gains[1], gains[2])
