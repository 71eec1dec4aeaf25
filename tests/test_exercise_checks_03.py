"""The self-checks of notebook 03 (bnlib.check_batchnorm_forward, check_batchnorm_backward):
each passes a right answer (written here with PyTorch, independent of bnlib's math) and
explains a wrong one."""
import numpy as np
import torch
import torch.nn.functional as F

import bnlib


def torch_forward(x, gamma, beta, eps):
    return F.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                        torch.from_numpy(beta), training=True, eps=eps).numpy()


def torch_backward(dout, x, gamma, eps):
    xt, gt = torch.tensor(x, requires_grad=True), torch.tensor(gamma, requires_grad=True)
    bt = torch.zeros_like(gt, requires_grad=True)
    F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps).backward(torch.from_numpy(dout))
    return xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


def numpy_compact_backward(dout, x, gamma, eps):
    m = len(x)
    invstd = 1 / np.sqrt(x.var(axis=0) + eps)
    x_hat = (x - x.mean(axis=0)) * invstd
    dbeta, dgamma = dout.sum(axis=0), (dout * x_hat).sum(axis=0)
    return gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma), dgamma, dbeta


def report(capsys, check, fn):
    ok = check(fn)
    return ok, capsys.readouterr().out


def test_forward_check_passes_a_right_forward(capsys):
    ok, out = report(capsys, bnlib.check_batchnorm_forward, torch_forward)
    assert ok and "PASS" in out


def test_forward_check_names_the_unbiased_variance(capsys):
    def unbiased(x, gamma, beta, eps):
        return (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) * gamma + beta
    ok, out = report(capsys, bnlib.check_batchnorm_forward, unbiased)
    assert not ok and "unbiased" in out


def test_forward_check_names_eps_outside_the_square_root(capsys):
    def eps_outside(x, gamma, beta, eps):
        return (x - x.mean(0)) / (x.std(0) + eps) * gamma + beta
    ok, out = report(capsys, bnlib.check_batchnorm_forward, eps_outside)
    assert not ok and "inside" in out


def test_forward_check_reports_statistics_over_the_wrong_axis(capsys):
    def rows(x, gamma, beta, eps):
        return (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps) * gamma + beta
    ok, out = report(capsys, bnlib.check_batchnorm_forward, rows)
    assert not ok and "off by up to" in out


def test_forward_check_reports_a_changed_input(capsys):
    def in_place(x, gamma, beta, eps):
        x -= x.mean(0)
        return x / np.sqrt(x.var(0) + eps) * gamma + beta
    ok, out = report(capsys, bnlib.check_batchnorm_forward, in_place)
    assert not ok and "in place" in out


def test_forward_check_says_a_stub_is_not_done(capsys):
    def stub(x, gamma, beta, eps):
        raise NotImplementedError
    ok, out = report(capsys, bnlib.check_batchnorm_forward, stub)
    assert not ok and "not done yet" in out


def test_backward_check_passes_torch_autograd(capsys):
    ok, out = report(capsys, bnlib.check_batchnorm_backward, torch_backward)
    assert ok and "PASS" in out


def test_backward_check_passes_the_compact_formula(capsys):
    ok, out = report(capsys, bnlib.check_batchnorm_backward, numpy_compact_backward)
    assert ok and "PASS" in out


def test_backward_check_names_the_missing_variance_term(capsys):
    def no_var_term(dout, x, gamma, eps):
        dx, dgamma, dbeta = numpy_compact_backward(dout, x, gamma, eps)
        invstd = 1 / np.sqrt(x.var(axis=0) + eps)
        return gamma * invstd * (dout - dout.mean(axis=0)), dgamma, dbeta
    ok, out = report(capsys, bnlib.check_batchnorm_backward, no_var_term)
    assert not ok and "variance" in out


def test_backward_check_names_the_missing_mean_term(capsys):
    def no_mean_term(dout, x, gamma, eps):
        m = len(x)
        invstd = 1 / np.sqrt(x.var(axis=0) + eps)
        x_hat = (x - x.mean(axis=0)) * invstd
        dbeta, dgamma = dout.sum(axis=0), (dout * x_hat).sum(axis=0)
        return gamma * invstd / m * (m * dout - x_hat * dgamma), dgamma, dbeta
    ok, out = report(capsys, bnlib.check_batchnorm_backward, no_mean_term)
    assert not ok and "mean" in out


def test_backward_check_names_swapped_dgamma_and_dbeta(capsys):
    def swapped(dout, x, gamma, eps):
        dx, dgamma, dbeta = torch_backward(dout, x, gamma, eps)
        return dx, dbeta, dgamma
    ok, out = report(capsys, bnlib.check_batchnorm_backward, swapped)
    assert not ok and "swapped" in out


def test_backward_check_asks_for_a_tuple_of_three(capsys):
    ok, out = report(capsys, bnlib.check_batchnorm_backward, lambda dout, x, gamma, eps: dout)
    assert not ok and "tuple" in out


def test_backward_check_says_a_stub_is_not_done(capsys):
    def stub(dout, x, gamma, eps):
        raise NotImplementedError
    ok, out = report(capsys, bnlib.check_batchnorm_backward, stub)
    assert not ok and "not done yet" in out
