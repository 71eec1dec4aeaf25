"""bnlib section 6, notebook 01's block: two MNIST features, logistic regression's loss,
gradient, Hessian, minimum and condition number, gradient-descent paths (one rate or a sweep),
when a run settles, and a hidden layer's activations (the bridge).
References: PyTorch (autograd, BCEWithLogits, SGD), finite differences, closed forms."""
import numpy as np
import pytest
import torch

import bnlib
from torch_reference import torch_logreg_loss


def two_feature_problem(seed=0, n=60):
    """Features on different scales (like ink and width) and labels 0/1 that overlap."""
    rng = np.random.default_rng(seed)
    X = np.stack([rng.normal(100, 40, n), rng.normal(13, 5, n)], axis=1)
    y = (X[:, 0] / 40 - X[:, 1] / 5 + rng.normal(0, 1, n) > 100 / 40 - 13 / 5).astype(np.float64)
    return X, y


# --- features ---------------------------------------------------------------

def test_ink_and_width_of_a_drawn_rectangle():
    img = np.zeros((28, 28), dtype=np.float32)
    img[4:20, 5:13] = 1.0                      # 16 rows x 8 columns of full ink
    img[10, 20] = 0.4                          # faint pixel: ink, but not past 0.5 for the width
    feats = bnlib.ink_and_width(img.reshape(1, 784))
    assert feats.shape == (1, 2)
    assert feats[0, 0] == pytest.approx(16 * 8 + 0.4)
    assert feats[0, 1] == 8


def test_ink_and_width_match_a_per_image_loop_on_mnist():
    X, _ = bnlib.load_mnist(train=False)
    X = X[:50]
    feats = bnlib.ink_and_width(X)
    for img, (ink, width) in zip(X.reshape(-1, 28, 28), feats):
        cols = np.nonzero((img > 0.5).any(axis=0))[0]
        assert width == (cols[-1] - cols[0] + 1 if len(cols) else 0)
        assert ink == pytest.approx(float(torch.tensor(img, dtype=torch.float64).sum()), rel=1e-12)


def test_ink_and_width_rejects_images_that_are_not_flattened():
    with pytest.raises(ValueError, match="784"):
        bnlib.ink_and_width(np.zeros((3, 28, 28)))


# --- loss, gradient, Hessian -----------------------------------------------

def test_logreg_loss_matches_torch_bce_with_logits():
    X, y = two_feature_problem()
    w, b = np.array([0.03, -0.2]), 0.4
    want = torch_logreg_loss(torch.tensor(w), X, y, b).item()
    assert bnlib.logreg_loss(w, X, y, b) == pytest.approx(want, rel=1e-12)


def test_logreg_loss_on_a_grid_of_weights_matches_one_at_a_time():
    X, y = two_feature_problem()
    W = np.stack(np.meshgrid(np.linspace(-0.1, 0.1, 4), np.linspace(-1, 1, 3)), axis=-1)   # (3, 4, 2)
    grid = bnlib.logreg_loss(W, X, y, 0.5)
    assert grid.shape == (3, 4)
    assert grid[2, 1] == pytest.approx(torch_logreg_loss(torch.tensor(W[2, 1]), X, y, 0.5).item(), rel=1e-12)


def test_logreg_loss_does_not_overflow_for_huge_logits():
    X, y = two_feature_problem()
    assert np.isfinite(bnlib.logreg_loss(np.array([50.0, 50.0]), X, y))


def test_logreg_grad_matches_torch_autograd():
    X, y = two_feature_problem()
    w = torch.tensor([0.02, -0.1], dtype=torch.float64, requires_grad=True)
    torch_logreg_loss(w, X, y, -1.0).backward()
    got = bnlib.logreg_grad(w.detach().numpy(), X, y, -1.0)
    assert bnlib.rel_error(got, w.grad.numpy()) < 1e-12


def test_logreg_grad_matches_finite_differences():
    X, y = two_feature_problem()
    w = np.array([0.02, -0.1])
    num = bnlib.numerical_gradient(lambda v: bnlib.logreg_loss(v, X, y, -1.0), w.copy(), 1.0, h=1e-6)
    assert bnlib.rel_error(bnlib.logreg_grad(w, X, y, -1.0), num) < 1e-7


def test_logreg_hessian_matches_torch_autograd_hessian():
    X, y = two_feature_problem()
    w = np.array([0.02, -0.1])
    want = torch.autograd.functional.hessian(lambda v: torch_logreg_loss(v, X, y, -1.0),
                                             torch.tensor(w)).numpy()
    assert bnlib.rel_error(bnlib.logreg_hessian(w, X, y, -1.0), want) < 1e-10


def test_hessian_condition_number_matches_numpy_cond_of_torch_hessian():
    X, y = two_feature_problem()
    w = np.array([0.02, -0.1])
    lam = np.linalg.eigvalsh(bnlib.logreg_hessian(w, X, y, -1.0))
    H_torch = torch.autograd.functional.hessian(lambda v: torch_logreg_loss(v, X, y, -1.0), torch.tensor(w))
    assert lam[-1] / lam[0] == pytest.approx(np.linalg.cond(H_torch.numpy()), rel=1e-8)
    assert lam[-1] / lam[0] > 50             # different scales: an ill-conditioned problem


def test_logreg_rejects_labels_other_than_0_and_1():
    X, y = two_feature_problem()
    with pytest.raises(ValueError, match="0 and 1"):
        bnlib.logreg_loss(np.zeros(2), X, 2 * y - 1)


def test_logreg_rejects_weights_of_the_wrong_length():
    X, y = two_feature_problem()
    with pytest.raises(ValueError, match="D=2"):
        bnlib.logreg_grad(np.zeros(3), X, y)


# --- the minimum and gradient descent ----------------------------------------

def test_fit_logreg_reaches_a_point_where_torch_gradient_vanishes():
    X, y = two_feature_problem()
    w, b = bnlib.fit_logreg(X, y)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    torch_logreg_loss(wt, X, y, bt).backward()
    assert max(wt.grad.abs().max().item(), abs(bt.grad.item())) < 1e-10


def test_standardizing_changes_the_weights_but_not_the_best_loss():
    X, y = two_feature_problem()
    mu, sd = X.mean(axis=0), X.std(axis=0)
    w_raw, b_raw = bnlib.fit_logreg(X, y)
    w_std, b_std = bnlib.fit_logreg((X - mu) / sd, y)
    assert np.allclose(w_raw, w_std / sd, rtol=1e-8)               # closed-form reparametrization
    assert b_raw == pytest.approx(b_std - np.sum(w_std * mu / sd), rel=1e-8)


def test_gd_path_takes_the_same_steps_as_torch_sgd():
    X, y = two_feature_problem()
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1e-3)
    want = [w.detach().clone().numpy()]
    for _ in range(5):
        opt.zero_grad()
        torch_logreg_loss(w, X, y, 0.3).backward()
        opt.step()
        want.append(w.detach().clone().numpy())
    path, losses = bnlib.gd_path(X, y, np.zeros(2), 1e-3, 5, b=0.3)
    assert path.shape == (6, 2) and losses.shape == (6,)
    assert np.allclose(path, np.array(want), rtol=1e-12, atol=1e-15)
    assert losses[3] == pytest.approx(torch_logreg_loss(torch.tensor(path[3]), X, y, 0.3).item(), rel=1e-12)


def test_gd_path_rejects_a_negative_learning_rate():
    X, y = two_feature_problem()
    with pytest.raises(ValueError, match="lr > 0"):
        bnlib.gd_path(X, y, np.zeros(2), -0.1, 10)


def test_gd_sweep_takes_the_same_steps_as_torch_sgd_at_every_rate():
    X, y = two_feature_problem()
    lrs = [1e-4, 1e-3, 3e-3]
    paths, losses = bnlib.gd_sweep(X, y, lrs, 6, b=-0.2)
    assert paths.shape == (3, 7, 2) and losses.shape == (3, 7)
    for r, lr in enumerate(lrs):
        w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr)
        for k in range(7):
            assert np.allclose(paths[r, k], w.detach().numpy(), rtol=1e-12, atol=1e-15)
            loss = torch_logreg_loss(w, X, y, -0.2)
            assert losses[r, k] == pytest.approx(loss.item(), rel=1e-12)
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_gd_sweep_losses_stay_finite_for_huge_logits():
    X, y = two_feature_problem()
    _, losses = bnlib.gd_sweep(X * 1e3, y, [10.0], 3)
    assert np.all(np.isfinite(losses))


def test_gd_path_refuses_several_learning_rates():
    X, y = two_feature_problem()
    with pytest.raises(ValueError, match="gd_sweep"):
        bnlib.gd_path(X, y, np.zeros(2), [0.1, 0.2], 10)


def test_steps_to_settle_ignores_a_visit_that_bounces_out_again():
    assert bnlib.steps_to_settle([3.0, 0.9, 1.1, 0.95, 0.5], 1.0) == 3
    assert bnlib.steps_to_settle([0.5, 0.4], 1.0) == 0
    assert bnlib.steps_to_settle([3.0, 0.9, 1.1], 1.0) is None
    assert bnlib.steps_to_settle([3.0, 0.9, np.nan], 1.0) is None


def test_gd_settles_below_two_over_lambda_max_at_the_minimum_and_not_above():
    # labels independent of the features: the minimum sits near w = 0, where the Hessian is
    # close to X^T X / (4 N); gradient descent on a quadratic settles iff lr < 2 / lambda_max.
    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (400, 2)) * [3.0, 0.5]
    y = (rng.random(400) < 0.5).astype(np.float64)
    w_star, b_star = bnlib.fit_logreg(X, y)
    H = torch.autograd.functional.hessian(lambda v: torch_logreg_loss(v, X, y, b_star),
                                          torch.tensor(w_star)).numpy()
    lam_max = np.linalg.eigvalsh(H)[-1]
    threshold = torch_logreg_loss(torch.tensor(w_star), X, y, b_star).item() + 1e-6
    _, losses = bnlib.gd_sweep(X, y, 2 / lam_max * np.array([0.5, 0.9, 1.1, 1.5]), 1000, b=b_star)
    settled = [bnlib.steps_to_settle(run, threshold) for run in losses]
    assert settled[0] is not None and settled[1] is not None
    assert settled[2] is None and settled[3] is None


# --- the bridge: a hidden layer's inputs ----------------------------------------

def torch_newton_minimum(A, y, steps=20):
    """The minimum of the mean logistic loss of A @ theta (A has a column of ones), by Newton's
    method with PyTorch autograd's gradient and Hessian."""
    loss = lambda th: torch_logreg_loss(th, A, y, 0.0)
    theta = torch.zeros(A.shape[1], dtype=torch.float64)
    for _ in range(steps):
        g = torch.autograd.functional.jacobian(loss, theta)
        theta = theta - torch.linalg.solve(torch.autograd.functional.hessian(loss, theta), g)
    return theta


def test_logreg_condition_number_matches_cond_of_torch_hessian_at_the_minimum():
    X, y = two_feature_problem()
    A = np.hstack([X, np.ones((len(X), 1))])
    theta = torch_newton_minimum(A, y)
    H = torch.autograd.functional.hessian(lambda th: torch_logreg_loss(th, A, y, 0.0), theta)
    want = np.linalg.cond(H.numpy())
    assert bnlib.logreg_condition_number(X, y) == pytest.approx(want, rel=1e-8)
    assert want > 1e3                          # features with large means: stretched with the bias


def test_logreg_condition_number_of_standardized_features_is_small():
    X, y = two_feature_problem()
    assert bnlib.logreg_condition_number((X - X.mean(0)) / X.std(0), y) < 10


def test_logreg_condition_number_refuses_a_constant_feature():
    X, y = two_feature_problem()
    X[:, 1] = 1.0                              # the same as the bias column
    with pytest.raises(ValueError, match="singular"):
        bnlib.logreg_condition_number(X, y)


def test_last_hidden_layer_matches_torch_linear_and_sigmoid():
    net = bnlib.MLP([5, 4, 3, 1], activation="sigmoid", seed=2, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(6, 5))
    h = torch.tensor(x)
    for lin in net.linears[:-1]:
        layer = torch.nn.Linear(*lin.W.shape).double()
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(lin.W.T))
            layer.bias.copy_(torch.from_numpy(lin.b))
        h = torch.sigmoid(layer(h))
    got = bnlib.last_hidden_layer(net, x)
    assert got.shape == (6, 3)
    assert np.allclose(got, h.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_last_hidden_layer_refuses_a_model_without_hidden_layers():
    with pytest.raises(TypeError, match="hidden layer"):
        bnlib.last_hidden_layer(bnlib.MLP([5, 1], activation="sigmoid"), np.zeros((2, 5)))
