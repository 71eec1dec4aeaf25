"""bnlib section 6, notebook 08's block: the torch models and tools of 'BN in modern networks',
checked against closed forms and against torch computed another way."""
import numpy as np
import pytest
import torch

import bnlib

RNG = np.random.default_rng(8)
X = RNG.random((16, 784)).astype(np.float32)
Y = RNG.integers(0, 10, 16)


def test_zero_init_last_gamma_makes_every_residual_block_the_identity():
    model = bnlib.deep_bn_mlp(4, 12, residual=True, zero_init_last_gamma=True, seed=0).train()
    h = model[:3](torch.from_numpy(X))                       # after the stem
    for block in model[3:-1]:
        assert torch.equal(block(h), h)
    plain = bnlib.deep_bn_mlp(4, 12, seed=0)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules()) == 5


def test_grad_norms_of_a_zero_init_residual_net_vanish_inside_the_blocks_only():
    model = bnlib.deep_bn_mlp(4, 12, residual=True, zero_init_last_gamma=True, seed=0)
    g = bnlib.linear_grad_norms(model, X, Y)
    assert len(g) == 6 and np.all(g[1:-1] == 0) and g[0] > 0 and g[-1] > 0
    model.zero_grad()
    direct = torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(Y))
    direct.backward()                                         # the head's gradient, computed again
    assert g[-1] == pytest.approx(model[-1].weight.grad.double().pow(2).sum().item(), rel=1e-6)


def test_weight_decay_groups_decay_the_matrices_and_spare_gamma_beta_and_biases():
    model = bnlib.deep_bn_mlp(2, 8, seed=0)
    decay, spare = bnlib.weight_decay_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} | {id(p) for p in spare["params"]} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in decay["params"]} & {id(p) for p in spare["params"]}
    assert decay["weight_decay"] == 0.1 and spare["weight_decay"] == 0.0
    W, gamma = model[0].weight, model[1].weight
    W0, gamma0 = W.detach().clone(), gamma.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)                          # only the decay moves them
    torch.optim.SGD(bnlib.weight_decay_groups(model, 0.1), lr=0.5).step()
    assert torch.allclose(W, W0 * (1 - 0.5 * 0.1)) and torch.equal(gamma, gamma0)


def test_frozen_bn_gives_eval_mode_bn_in_any_mode_and_never_moves():
    backbone, _ = bnlib.small_cnn(seed=0)
    backbone.train()(torch.from_numpy(X))                     # non-trivial running statistics
    want = backbone.eval()(torch.from_numpy(X))
    bnlib.freeze_batchnorm2d(backbone)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    got = backbone.train()(torch.from_numpy(X))
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(backbone.train()(torch.from_numpy(X)), want, atol=1e-6)


def test_batchnorm_eval_puts_only_bn_back_in_eval_mode():
    model = bnlib.dropout_bn_mlp("dropout_before_bn").train()
    bnlib.batchnorm_eval(model)
    for m in model.modules():
        assert m.training == (not isinstance(m, torch.nn.BatchNorm1d))


def test_train_torch_with_bn_eval_leaves_the_running_statistics_alone():
    model = bnlib.deep_bn_mlp(2, 8, seed=0)
    before = [b.clone() for b in model.buffers()]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = bnlib.train_torch(model, opt, X, Y, steps=3, batch_size=8, bn_eval=True)
    assert len(losses) == 3 and all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_torch_accuracy_counts_in_eval_mode_and_gives_the_modes_back():
    model = bnlib.dropout_bn_mlp("dropout_after_bn").train()
    with torch.no_grad():
        want = np.mean(model.eval()(torch.from_numpy(X)).argmax(1).numpy() == Y)
    model.train()
    assert bnlib.torch_accuracy(model, X, Y) == want and all(m.training for m in model.modules())


def test_variance_shift_is_running_var_over_the_eval_variance_of_the_last_bns_input():
    model = bnlib.dropout_bn_mlp("dropout_before_bn", p=0.5)
    for _ in range(5):                                        # training-mode passes: statistics move
        model.train()(torch.from_numpy(X))
    with torch.no_grad():
        inputs = model[:5].eval()(torch.from_numpy(X))        # up to the second Linear's output
    want = model[5].running_var.double().numpy() / inputs.double().var(dim=0).numpy()
    model.train()
    np.testing.assert_allclose(bnlib.variance_shift(model, X), want, rtol=1e-6)
    assert all(m.training for m in model.modules())


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="even"):
        bnlib.deep_bn_mlp(3, 8, residual=True)
    with pytest.raises(ValueError, match="residual=True"):
        bnlib.deep_bn_mlp(4, 8, zero_init_last_gamma=True)
    with pytest.raises(ValueError, match="order"):
        bnlib.dropout_bn_mlp("before")
    with pytest.raises(ValueError, match="batch_size"):
        bnlib.train_torch(bnlib.deep_bn_mlp(2, 8), None, X, Y, steps=2, batch_size=1)
