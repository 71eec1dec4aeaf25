"""bnlib section 6, notebook 06's block (why BN works): the noise BN's batch statistics put
on one example (x_hat_in_random_batches) and the loss along the gradient.
References: PyTorch and closed forms."""
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


# --- gradient_change_along_gradient -------------------------------------------------------

@pytest.mark.parametrize("norm", [None, "batch"])
def test_gradient_change_matches_torch_autograd(norm):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 8)), rng.integers(0, 3, size=20)
    model = bnlib.MLP([8, 6, 6, 3], activation="sigmoid", norm=norm, seed=1, dtype=np.float64)
    params = mlp_params(model)
    mlp_loss(params, model, x, y).backward()
    g0 = {k: p.grad.detach().clone() for k, p in params.items()}
    g0_norm = torch.sqrt(sum((g ** 2).sum() for g in g0.values())).item()
    want = []
    for eta in (0.0, 0.3, 3.0):
        moved = {k: (p - eta * g0[k]).detach().requires_grad_(True) for k, p in params.items()}
        mlp_loss(moved, model, x, y).backward()
        diff = sum(((moved[k].grad - g0[k]) ** 2).sum() for k in g0)
        want.append(torch.sqrt(diff).item() / g0_norm)
    got = bnlib.gradient_change_along_gradient(model, x, y, [0.0, 0.3, 3.0])
    assert got[0] == 0.0
    assert np.max(np.abs(got - np.array(want))) < 1e-10
    assert got[2] > 1e-3                               # the gradient does change: not a vacuous 0


def test_gradient_change_leaves_the_model_unchanged_and_refuses_bad_steps():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(16, 8)), rng.integers(0, 3, size=16)
    model = bnlib.MLP([8, 6, 3], activation="relu", norm="batch", seed=0, dtype=np.float64)
    before = [p.copy() for _, p, _ in model.parameters()]
    bnlib.gradient_change_along_gradient(model, x, y, [1.0, 4.0])
    assert all(np.array_equal(a, p) for a, (_, p, _) in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="gradient_change_along_gradient: step_sizes"):
        bnlib.gradient_change_along_gradient(model, x, y, [np.nan])
