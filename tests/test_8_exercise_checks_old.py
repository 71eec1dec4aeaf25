"""The tests of bnlib's exercise checks (section 8) and of the helpers they run on (run_check,
expect_array, CheckFailed), as they were before tests/test_exercise_checks.py: gathered here
unchanged, and to be deleted when that file replaces them. Each check passes a right answer
(written here, with PyTorch or plain numpy) and names a wrong one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnlib


def report(capsys, check, fn):
    ok = check(fn)
    return ok, capsys.readouterr().out


# --- section 8's tools: run_check, Verdict, expect_array ----------------------------------

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


# --- notebook 01: check_standardize -------------------------------------------------------

def right_standardize(X):
    X = np.asarray(X, dtype=np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd == 0, 1.0, sd)
    return (X - mu) / sd, mu, sd


def sample_std(X):
    X = np.asarray(X, dtype=np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0, ddof=1)
    sd = np.where(sd == 0, 1.0, sd)
    return (X - mu) / sd, mu, sd


def no_guard(X):
    X = np.asarray(X, dtype=np.float64)
    return (X - X.mean(axis=0)) / X.std(axis=0), X.mean(axis=0), X.std(axis=0)


def global_stats(X):
    X = np.asarray(X, dtype=np.float64)
    return (X - X.mean()) / X.std(), X.mean(), X.std()


def test_check_standardize_passes_a_right_answer(capsys):
    bnlib.check_standardize(right_standardize)
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, named", [(sample_std, "1/(N-1)"), (no_guard, "constant column"),
                                            (global_stats, "per column")],
                         ids=["the_sample_std", "nan_from_a_constant_column", "one_global_mean"])
def test_check_standardize_reports(mistake, named, capsys):
    with np.errstate(invalid="ignore", divide="ignore"):
        bnlib.check_standardize(mistake)
    out = capsys.readouterr().out
    assert "not yet" in out and named in out


def test_check_standardize_says_not_done_yet_for_the_stub(capsys):
    def stub(X):
        raise NotImplementedError
    bnlib.check_standardize(stub)
    assert "not done yet" in capsys.readouterr().out


# --- notebook 02: check_line_fit_r2 -------------------------------------------------------

def test_check_line_fit_r2_passes_a_right_answer(capsys):
    def line_fit_r2(z, s):
        a, b = np.polyfit(z, s, 1)
        return 1 - np.sum((s - a * z - b) ** 2) / np.sum((s - s.mean()) ** 2)
    bnlib.check_line_fit_r2(line_fit_r2)
    assert capsys.readouterr().out.strip() == "line_fit_r2: PASS"


def test_check_line_fit_r2_reports_returning_the_correlation(capsys):
    bnlib.check_line_fit_r2(lambda z, s: np.corrcoef(z, s)[0, 1])
    out = capsys.readouterr().out
    assert "not yet" in out and "correlation" in out


def test_check_line_fit_r2_reports_a_line_through_the_origin(capsys):
    def through_origin(z, s):
        a = np.sum(z * s) / np.sum(z * z)
        return 1 - np.sum((s - a * z) ** 2) / np.sum((s - s.mean()) ** 2)
    bnlib.check_line_fit_r2(through_origin)
    out = capsys.readouterr().out
    assert "not yet" in out and "intercept" in out


def test_check_line_fit_r2_says_not_done_for_the_stub(capsys):
    def stub(z, s):
        raise NotImplementedError
    bnlib.check_line_fit_r2(stub)
    assert "not done yet" in capsys.readouterr().out


# --- notebook 03: check_batchnorm_forward, check_batchnorm_backward -----------------------

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


# --- notebook 04: check_running_stats_update ----------------------------------------------

def right_update(running_mean, running_var, x, momentum):
    """Written with torch's functional batch_norm, independent of bnlib."""
    rm, rv = torch.from_numpy(running_mean.copy()), torch.from_numpy(running_var.copy())
    torch.nn.functional.batch_norm(torch.from_numpy(x), rm, rv, training=True, momentum=momentum)
    return rm.numpy(), rv.numpy()


def keras_convention(running_mean, running_var, x, momentum):
    return (momentum * running_mean + (1 - momentum) * x.mean(axis=0),
            momentum * running_var + (1 - momentum) * x.var(axis=0, ddof=1))


def biased_variance(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(axis=0),
            (1 - momentum) * running_var + momentum * x.var(axis=0))


def test_running_stats_check_passes_a_right_update(capsys):
    ok, out = report(capsys, bnlib.check_running_stats_update, right_update)
    assert ok and "PASS" in out


def test_running_stats_check_names_the_keras_convention(capsys):
    ok, out = report(capsys, bnlib.check_running_stats_update, keras_convention)
    assert not ok and "OLD value" in out


def test_running_stats_check_names_the_biased_variance(capsys):
    ok, out = report(capsys, bnlib.check_running_stats_update, biased_variance)
    assert not ok and "biased batch variance" in out


def test_running_stats_check_says_not_done_yet_for_the_stub(capsys):
    def stub(running_mean, running_var, x, momentum):
        raise NotImplementedError
    ok, out = report(capsys, bnlib.check_running_stats_update, stub)
    assert not ok and "not done yet" in out


def test_running_stats_check_reports_a_missing_return(capsys):
    def no_return(running_mean, running_var, x, momentum):
        running_mean += momentum * x.mean(axis=0)
    ok, out = report(capsys, bnlib.check_running_stats_update, no_return)
    assert not ok and "tuple" in out


# --- notebook 05: check_batchnorm_nhwc, check_spatial_batchnorm_backward ------------------

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


# --- notebook 06: check_x_hat_of_example --------------------------------------------------

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


# --- notebook 07: check_fold_linear_bn, check_groupnorm_rows ------------------------------

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
