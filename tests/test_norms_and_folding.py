"""LayerNorm, GroupNorm, BN folding, precise BN statistics and notebook 07's exercise checks,
against PyTorch (functional ops, autograd, fuse_*_bn_eval, update_bn) and finite differences."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import bnlib
from torch_reference import mlp_grads


def batch(shape, seed=0):
    """float64 activations with features of different means and scales, plus params and dout."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    spread = np.linspace(0.5, 3.0, c).reshape((1, c) + (1,) * (len(shape) - 2))
    x = rng.standard_normal(shape) * spread + 2.0
    return x, 1.0 + rng.random(c), rng.standard_normal(c), rng.standard_normal(shape)


def torch_grads(fn, x, gamma, beta, dout):
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    out = fn(xt, gt, bt)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


def finite_differences(f, x, dout, h=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        grad[i] = np.sum((f(xp) - f(xm)) * dout) / (2 * h)
    return grad


# ---- LayerNorm and GroupNorm: forward and backward ------------------------------------------

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
    numeric = finite_differences(lambda a: bnlib.groupnorm_forward(a, gamma, beta, 2)[0], x, dout)
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
    with pytest.raises(ValueError, match="divides"):
        bnlib.GroupNorm(100, num_groups=32)


def test_groupnorm_refuses_wrong_gamma_shape_and_3d_input():
    x, gamma, beta, _ = batch((4, 10))
    with pytest.raises(ValueError, match="gamma"):
        bnlib.groupnorm_forward(x, gamma[:5], beta, 2)
    with pytest.raises(ValueError, match="2-D"):
        bnlib.layernorm_forward(x[:, :, None], gamma, beta)


# ---- the layer classes and the MLP ----------------------------------------------------------

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


@pytest.mark.parametrize("name", ["layer", "group"])
def test_mlp_with_layer_or_group_norm_gradients_match_torch_autograd(name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 12)), rng.integers(0, 4, size=6)
    model = bnlib.MLP([12, 16, 24, 4], activation="relu", norm=name, seed=1, dtype=np.float64)
    for layer in model.norms:
        layer.gamma += rng.normal(0, 0.3, size=layer.gamma.shape)
        layer.beta += rng.normal(0, 0.3, size=layer.beta.shape)
    _, dlogits = bnlib.softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    _, ref = mlp_grads(model, x, y)
    for pname, _, grad in model.parameters():
        assert np.max(np.abs(grad - ref[pname])) < 1e-10, pname


# ---- folding BN into the layer before it ----------------------------------------------------

def torch_linear_bn(W, b, gamma, beta, mean, var, eps):
    linear = torch.nn.Linear(*W.shape).double().eval()
    bn = torch.nn.BatchNorm1d(W.shape[1], eps=eps).double().eval()
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(W.T))
        for t, a in ((linear.bias, b), (bn.weight, gamma), (bn.bias, beta),
                     (bn.running_mean, mean), (bn.running_var, var)):
            t.copy_(torch.from_numpy(a))
    return linear, bn


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


# ---- precise BN statistics ------------------------------------------------------------------

def trained_like_bn_mlp_and_torch_copy(X):
    rng = np.random.default_rng(0)
    model = bnlib.MLP([10, 8, 6, 3], activation="relu", norm="batch", seed=2, dtype=np.float64)
    for layer in model.norms:
        layer.gamma += rng.normal(0, 0.3, size=layer.gamma.shape)
        layer.beta += rng.normal(0, 0.3, size=layer.beta.shape)
    layers = []
    for lin, bn in zip(model.linears[:-1], model.norms):
        t_lin = torch.nn.Linear(*lin.W.shape, bias=False).double()
        t_bn = torch.nn.BatchNorm1d(lin.W.shape[1]).double()
        with torch.no_grad():
            t_lin.weight.copy_(torch.from_numpy(lin.W.T))
            t_bn.weight.copy_(torch.from_numpy(bn.gamma))
            t_bn.bias.copy_(torch.from_numpy(bn.beta))
        layers += [t_lin, t_bn, torch.nn.ReLU()]
    return model, torch.nn.Sequential(*layers)


def test_precise_bn_statistics_of_the_first_layer_match_torch_update_bn():
    X = np.random.default_rng(1).normal(size=(300, 10)) * 2 + 1
    model, net = trained_like_bn_mlp_and_torch_copy(X)
    bnlib.precise_bn_statistics(model, X)
    torch.optim.swa_utils.update_bn([torch.from_numpy(X)], net)
    assert np.max(np.abs(model.norms[0].running_mean - net[1].running_mean.numpy())) < 1e-12
    assert np.max(np.abs(model.norms[0].running_var - net[1].running_var.numpy())) < 1e-12
    assert not model.norms[0].training


def test_precise_bn_statistics_are_what_each_bn_layer_sees_at_inference():
    X = np.random.default_rng(1).normal(size=(300, 10)) * 2 + 1
    model, net = trained_like_bn_mlp_and_torch_copy(X)
    bnlib.precise_bn_statistics(model, X)
    bns = [m for m in net if isinstance(m, torch.nn.BatchNorm1d)]
    seen = []
    with torch.no_grad():
        for bn, t_bn in zip(model.norms, bns):
            t_bn.running_mean.copy_(torch.from_numpy(bn.running_mean))
            t_bn.running_var.copy_(torch.from_numpy(bn.running_var))
            t_bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].numpy()))
        net.eval()(torch.from_numpy(X))
    for bn, z in zip(model.norms, seen):
        assert np.max(np.abs(bn.running_mean - z.mean(axis=0))) < 1e-12
        assert np.max(np.abs(bn.running_var - z.var(axis=0, ddof=1))) < 1e-12


def test_precise_bn_statistics_refuse_a_single_example():
    model = bnlib.MLP([4, 3, 2], norm="batch")
    with pytest.raises(ValueError, match="N >= 2"):
        bnlib.precise_bn_statistics(model, np.ones((1, 4)))


# ---- exercise checks ------------------------------------------------------------------------

def test_fold_check_passes_a_right_answer_and_names_a_missing_eps(capsys):
    def right(W, b, gamma, beta, mean, var, eps):
        s = gamma / np.sqrt(var + eps)
        return W * s, (b - mean) * s + beta

    def no_eps(W, b, gamma, beta, mean, var, eps):
        s = gamma / np.sqrt(var)
        return W * s, (b - mean) * s + beta

    assert bnlib.check_fold_linear_bn(right)
    assert not bnlib.check_fold_linear_bn(no_eps)
    assert "eps" in capsys.readouterr().out.splitlines()[-1]


def test_groupnorm_check_passes_a_right_answer_and_spots_batch_statistics(capsys):
    def right(x, gamma, beta, num_groups, eps):
        g = x.reshape(len(x), num_groups, -1)
        g = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)
        return g.reshape(x.shape) * gamma + beta

    def batch_stats(x, gamma, beta, num_groups, eps):
        return (x - x.mean(0)) / np.sqrt(x.var(0) + eps) * gamma + beta

    assert bnlib.check_groupnorm_rows(right)
    assert not bnlib.check_groupnorm_rows(batch_stats)
    assert "BatchNorm" in capsys.readouterr().out.splitlines()[-1]


def test_checks_say_not_done_yet_for_a_stub(capsys):
    def stub(*args):
        raise NotImplementedError
    assert not bnlib.check_fold_linear_bn(stub)
    assert "not done yet" in capsys.readouterr().out
