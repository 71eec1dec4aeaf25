"""The exercise checks (bnlib's last section), all run by one driver. Every check is tried
with a right answer written here in plain numpy (not with bnlib), each catalogued mistake
written here again, the stub, and each way a result can come back wrong: NaN, inf, None, a
wrong shape, a tuple such as (out, cache), a list, float32, the learner's own exception."""
import os
import sysconfig

import numpy as np
import pytest
import torch

import bnlib


# --- right answers, written independently of bnlib and of the checks' references --------------

def standardize(X):
    X = np.asarray(X, dtype=np.float64)
    mu = X.mean(axis=0)
    sd = np.sqrt(((X - mu) ** 2).mean(axis=0))
    sd = np.where(sd == 0, 1.0, sd)
    return (X - mu) / sd, mu, sd


def line_fit_r2(z, s):
    zc, sc = z - z.mean(), s - s.mean()
    a = (zc @ sc) / (zc @ zc)
    residual = sc - a * zc
    return 1 - (residual @ residual) / (sc @ sc)


def batchnorm_forward(x, gamma, beta, eps):
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def batchnorm_backward(dout, x, gamma, eps):
    m = len(x)
    invstd = 1 / np.sqrt(x.var(axis=0) + eps)
    x_hat = (x - x.mean(axis=0)) * invstd
    dbeta, dgamma = dout.sum(axis=0), (dout * x_hat).sum(axis=0)
    return gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma), dgamma, dbeta


def scale_direction_sums(dout, x, gamma, beta, eps):
    dx, dgamma, _ = batchnorm_backward(dout, x, gamma, eps)
    var = x.var(axis=0)
    x_hat = (x - x.mean(axis=0)) / np.sqrt(var + eps)
    return (dx * x_hat).sum(axis=0), gamma / np.sqrt(var + eps) * dgamma * eps / (var + eps)


def update_running_stats(running_mean, running_var, x, momentum):
    n = len(x)
    return ((1 - momentum) * running_mean + momentum * x.mean(axis=0),
            (1 - momentum) * running_var + momentum * x.var(axis=0) * n / (n - 1))


def keras_running_var(torch_running_var, m, steps, keras_momentum):
    start = keras_momentum ** steps                  # the initial 1's share, the same in both
    return start + (torch_running_var - start) * (m - 1) / m


def digits_in_running_average(momentum, batch_size):
    weights = momentum * (1 - momentum) ** np.arange(200_000)     # the sum, far past the tail
    return batch_size / np.sum(weights ** 2)


def batchnorm_nhwc(x, gamma, beta, eps=1e-5):
    mu, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def spatial_batchnorm_backward(dout, x, gamma, beta, eps=1e-5):
    axes, m = (0, 2, 3), x.size // x.shape[1]
    per_channel = lambda a: a.reshape(1, -1, 1, 1)
    invstd = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) * invstd
    dbeta, dgamma = dout.sum(axis=axes), (dout * x_hat).sum(axis=axes)
    dx = per_channel(gamma) * invstd / m * (m * dout - per_channel(dbeta) - x_hat * per_channel(dgamma))
    return dx, dgamma, dbeta


def x_hat_of_example(value, batchmates, eps=1e-5):
    batch = np.append(batchmates, value)
    return (value - batch.mean()) / np.sqrt(batch.var() + eps)


def fold_linear_bn(W, b, gamma, beta, mean, var, eps):
    scale = gamma / np.sqrt(var + eps)
    return W * scale, (b - mean) * scale + beta


def groupnorm_rows(x, gamma, beta, num_groups, eps):
    g = x.reshape(len(x), num_groups, -1)
    g = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)
    return gamma * g.reshape(x.shape) + beta


def dropout_variance_ratio(mean, var, p):
    # E[d^2] = E[x^2] / (1 - p) for d = x * Bernoulli(1 - p) / (1 - p); Var = E[d^2] - E[d]^2
    second_moment = (var + mean * mean) / (1 - p)
    return (second_moment - mean * mean) / var


def combine_mean_var(counts, means, variances):
    n = counts.sum()
    w = counts[:, None] / n
    mean = (w * means).sum(axis=0)
    second_moment = (w * (variances + means ** 2)).sum(axis=0)      # E[x^2], shard by shard
    return mean, second_moment - mean ** 2


def ghost_batchnorm(x, gamma, beta, num_shards, eps):
    parts = []
    for shard in np.array_split(x, num_shards):
        mu = shard.mean(axis=0)
        parts.append(gamma * (shard - mu) / np.sqrt(((shard - mu) ** 2).mean(axis=0) + eps) + beta)
    return np.vstack(parts)


# title: (the public check, its data, a right answer)
CHECKS = {
    "standardize": (bnlib.check_standardize, bnlib.STANDARDIZE, standardize),
    "line_fit_r2": (bnlib.check_line_fit_r2, bnlib.LINE_FIT_R2, line_fit_r2),
    "batchnorm_forward": (bnlib.check_batchnorm_forward, bnlib.BATCHNORM_FORWARD, batchnorm_forward),
    "batchnorm_backward": (bnlib.check_batchnorm_backward, bnlib.BATCHNORM_BACKWARD, batchnorm_backward),
    "scale_direction_sums": (bnlib.check_scale_direction_sums, bnlib.SCALE_DIRECTION_SUMS, scale_direction_sums),
    "update_running_stats": (bnlib.check_running_stats_update, bnlib.RUNNING_STATS_UPDATE, update_running_stats),
    "keras_running_var": (bnlib.check_keras_running_var, bnlib.KERAS_RUNNING_VAR, keras_running_var),
    "digits_in_running_average": (bnlib.check_digits_in_running_average, bnlib.RUNNING_AVERAGE_DIGITS,
                                  digits_in_running_average),
    "batchnorm_nhwc": (bnlib.check_batchnorm_nhwc, bnlib.BATCHNORM_NHWC, batchnorm_nhwc),
    "spatial_batchnorm_backward": (bnlib.check_spatial_batchnorm_backward, bnlib.SPATIAL_BATCHNORM_BACKWARD,
                                   spatial_batchnorm_backward),
    "x_hat_of_example": (bnlib.check_x_hat_of_example, bnlib.X_HAT_OF_EXAMPLE, x_hat_of_example),
    "fold_linear_bn": (bnlib.check_fold_linear_bn, bnlib.FOLD_LINEAR_BN, fold_linear_bn),
    "groupnorm_rows": (bnlib.check_groupnorm_rows, bnlib.GROUPNORM_ROWS, groupnorm_rows),
    "dropout_variance_ratio": (bnlib.check_dropout_variance_ratio, bnlib.DROPOUT_VARIANCE_RATIO,
                               dropout_variance_ratio),
    "combine_mean_var": (bnlib.check_combine_mean_var, bnlib.COMBINE_MEAN_VAR, combine_mean_var),
    "ghost_batchnorm": (bnlib.check_ghost_batchnorm, bnlib.GHOST_BATCHNORM, ghost_batchnorm),
}


# --- each catalogued mistake, written again as a learner would ----------------------------------

def _keras_both(running_mean, running_var, x, momentum):
    return (momentum * running_mean + (1 - momentum) * x.mean(axis=0),
            momentum * running_var + (1 - momentum) * x.var(axis=0, ddof=1))


def _keras_variance_only(running_mean, running_var, x, momentum):
    mean, _ = update_running_stats(running_mean, running_var, x, momentum)
    return mean, momentum * running_var + (1 - momentum) * x.var(axis=0, ddof=1)


def _biased_running_var(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(axis=0),
            (1 - momentum) * running_var + momentum * x.var(axis=0))


def _std_running_var(running_mean, running_var, x, momentum):
    mean, _ = update_running_stats(running_mean, running_var, x, momentum)
    return mean, (1 - momentum) * running_var + momentum * x.std(axis=0, ddof=1)


def _no_guard(X):
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (X - X.mean(axis=0)) / X.std(axis=0), X.mean(axis=0), X.std(axis=0)


def _sample_std(X):
    X = np.asarray(X, dtype=np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0, ddof=1)
    sd = np.where(sd == 0, 1.0, sd)
    return (X - mu) / sd, mu, sd


def _global_stats(X):
    X = np.asarray(X, dtype=np.float64)
    return (X - X.mean()) / X.std(), X.mean(), X.std()


def _through_origin(z, s):
    a = (z @ s) / (z @ z)
    return 1 - np.sum((s - a * z) ** 2) / np.sum((s - s.mean()) ** 2)


def _spread_around_zero(z, s):
    zc = z - z.mean()
    a = (zc @ (s - s.mean())) / (zc @ zc)
    b = s.mean() - a * z.mean()
    return 1 - np.sum((s - a * z - b) ** 2) / np.sum(s * s)


def _backward_no_variance_path(dout, x, gamma, eps):
    _, dgamma, dbeta = batchnorm_backward(dout, x, gamma, eps)
    return gamma / np.sqrt(x.var(axis=0) + eps) * (dout - dout.mean(axis=0)), dgamma, dbeta


def _backward_no_mean_path(dout, x, gamma, eps):
    m, invstd = len(x), 1 / np.sqrt(x.var(axis=0) + eps)
    x_hat = (x - x.mean(axis=0)) * invstd
    dgamma = (dout * x_hat).sum(axis=0)
    return gamma * invstd * (dout - x_hat * dgamma / m), dgamma, dout.sum(axis=0)


def _backward_no_gamma(dout, x, gamma, eps):
    dx, dgamma, dbeta = batchnorm_backward(dout, x, np.ones_like(gamma), eps)
    return dx, (dout * (x - x.mean(0)) / np.sqrt(x.var(0) + eps)).sum(axis=0), dbeta


def _backward_swapped(dout, x, gamma, eps):
    dx, dgamma, dbeta = batchnorm_backward(dout, x, gamma, eps)
    return dx, dbeta, dgamma


def _scale_sums_no_eps_factor(dout, x, gamma, beta, eps):
    measured, _ = scale_direction_sums(dout, x, gamma, beta, eps)
    _, dgamma, _ = batchnorm_backward(dout, x, gamma, eps)
    return measured, gamma / np.sqrt(x.var(axis=0) + eps) * dgamma


def _scale_sums_eps_over_var(dout, x, gamma, beta, eps):
    measured, predicted = scale_direction_sums(dout, x, gamma, beta, eps)
    var = x.var(axis=0)
    return measured, predicted * (var + eps) / var


def _scale_sums_times_x(dout, x, gamma, beta, eps):
    dx, _, _ = batchnorm_backward(dout, x, gamma, eps)
    return (dx * x).sum(axis=0), scale_direction_sums(dout, x, gamma, beta, eps)[1]


def _nhwc_as_if_nchw(x, gamma, beta, eps=1e-5):
    mu, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def _nhwc_unbiased(x, gamma, beta, eps=1e-5):
    return gamma * (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2), ddof=1) + eps) + beta


def _spatial_reshape_only(dout, x, gamma, beta, eps=1e-5):
    dx, dgamma, dbeta = spatial_batchnorm_backward(dout, x, gamma, beta, eps)
    return dx.transpose(0, 2, 3, 1).reshape(x.shape), dgamma, dbeta


def _fold_no_eps_in_W(W, b, gamma, beta, mean, var, eps):
    _, b_folded = fold_linear_bn(W, b, gamma, beta, mean, var, eps)
    return W * gamma / np.sqrt(var), b_folded


def _fold_var_not_std(W, b, gamma, beta, mean, var, eps):
    scale = gamma / (var + eps)
    return W * scale, (b - mean) * scale + beta


def _fold_no_mean(W, b, gamma, beta, mean, var, eps):
    scale = gamma / np.sqrt(var + eps)
    return W * scale, b * scale + beta


def _fold_no_beta(W, b, gamma, beta, mean, var, eps):
    scale = gamma / np.sqrt(var + eps)
    return W * scale, (b - mean) * scale


def _groupnorm_strided(x, gamma, beta, num_groups, eps):
    g = x.reshape(len(x), -1, num_groups)
    g = (g - g.mean(axis=1, keepdims=True)) / np.sqrt(g.var(axis=1, keepdims=True) + eps)
    return gamma * g.reshape(x.shape) + beta


def _groupnorm_batch_stats(x, gamma, beta, num_groups, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta


def _groupnorm_layer_stats(x, gamma, beta, num_groups, eps):
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def _x_hat_without_example(value, mates, eps=1e-5):
    return (value - np.mean(mates)) / np.sqrt(np.var(mates) + eps)


def _x_hat_unbiased(value, mates, eps=1e-5):
    batch = np.append(mates, value)
    return (value - batch.mean()) / np.sqrt(batch.var(ddof=1) + eps)


def _x_hat_eps_outside(value, mates, eps=1e-5):
    batch = np.append(mates, value)
    return (value - batch.mean()) / (batch.std() + eps)


def _combine_plain_average(counts, means, variances):
    mean = np.mean(means, axis=0)
    return mean, np.mean(variances, axis=0) + np.var(means, axis=0)


def _combine_within_only(counts, means, variances):
    n = counts.sum()
    return (counts[:, None] * means).sum(0) / n, (counts[:, None] * variances).sum(0) / n


def _combine_unbiased(counts, means, variances):
    mean, var = combine_mean_var(counts, means, variances)
    return mean, var * counts.sum() / (counts.sum() - 1)


def _ghost_whole_batch(x, gamma, beta, num_shards, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta


def _ghost_every_kth(x, gamma, beta, num_shards, eps):
    out = np.zeros_like(x)
    for k in range(num_shards):
        out[k::num_shards] = _ghost_whole_batch(x[k::num_shards], gamma, beta, 1, eps)
    return out


def _ghost_last_gets_the_rest(x, gamma, beta, num_shards, eps):
    size = len(x) // num_shards
    bounds = [k * size for k in range(num_shards)] + [len(x)]
    return np.vstack([_ghost_whole_batch(x[a:b], gamma, beta, 1, eps) for a, b in zip(bounds, bounds[1:])])


def _ghost_sample_variance(x, gamma, beta, num_shards, eps):
    return np.vstack([gamma * (s - s.mean(0)) / np.sqrt(s.var(0, ddof=1) + eps) + beta
                      for s in np.array_split(x, num_shards)])


# title: [(a learner's function with one mistake, words the check must say about it)]
MISTAKES = {
    "standardize": [(_sample_std, "1/(N-1)"), (_no_guard, "constant column"), (_global_stats, "mu is one number")],
    "line_fit_r2": [(lambda z, s: np.corrcoef(z, s)[0, 1], "correlation"), (_through_origin, "intercept"),
                    (_spread_around_zero, "sum(s^2)")],
    "batchnorm_forward": [
        (lambda x, g, b, eps: g * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + b, "unbiased"),
        (lambda x, g, b, eps: g * (x - x.mean(0)) / (x.std(0) + eps) + b, "inside: sqrt(var + eps)"),
        (lambda x, g, b, eps: (x - x.mean(0)) / np.sqrt(x.var(0) + eps), "left out gamma and beta"),
        (lambda x, g, b, eps: g * (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps) + b,
         "each row")],
    "batchnorm_backward": [(_backward_swapped, "swapped"), (_backward_no_variance_path, "through the variance"),
                           (_backward_no_mean_path, "through the mean"), (_backward_no_gamma, "factor gamma")],
    "scale_direction_sums": [(_scale_sums_no_eps_factor, "misses the factor eps / (var + eps)"),
                             (_scale_sums_eps_over_var, "uses eps / var"), (_scale_sums_times_x, "sums dx * x")],
    "update_running_stats": [(_keras_both, "OLD value"), (_biased_running_var, "biased batch variance"),
                             (_std_running_var, "standard deviation"), (_keras_variance_only, "OLD variance")],
    "keras_running_var": [
        (lambda rv, m, steps, k: rv * (m - 1) / m, "whole running value"),
        (lambda rv, m, steps, k: rv * m / (m - 1) - k ** steps / (m - 1), "wrong way"),
        (lambda rv, m, steps, k: (1 - k) ** steps + (rv - (1 - k) ** steps) * (m - 1) / m, "not (1 - keras_momentum)"),
        (lambda rv, m, steps, k: rv, "unchanged")],
    "digits_in_running_average": [
        (lambda momentum, batch_size: batch_size / momentum, "horizon"),
        (lambda momentum, batch_size: 1 / np.sum((momentum * (1 - momentum) ** np.arange(200_000)) ** 2),
         "batches, not digits"),
        (lambda momentum, batch_size: batch_size / np.sum(((1 - momentum) * momentum ** np.arange(200_000)) ** 2),
         "Keras's convention"),
        (lambda momentum, batch_size: batch_size / np.sum(momentum * (1 - momentum) ** np.arange(200_000)),
         "SQUARED")],
    "batchnorm_nhwc": [(_nhwc_unbiased, "unbiased"), (_nhwc_as_if_nchw, "axes (0, 2, 3)")],
    "spatial_batchnorm_backward": [(_spatial_reshape_only, "reshape alone")],
    "x_hat_of_example": [(_x_hat_without_example, "without the example itself"),
                         (_x_hat_unbiased, "unbiased variance"), (_x_hat_eps_outside, "outside the square root")],
    "fold_linear_bn": [(_fold_no_eps_in_W, "ignores eps"), (_fold_var_not_std, "divides by var + eps"),
                       (_fold_no_mean, "running mean"), (_fold_no_beta, "forgets beta")],
    "groupnorm_rows": [(_groupnorm_strided, "CONSECUTIVE"), (_groupnorm_batch_stats, "BatchNorm"),
                       (_groupnorm_layer_stats, "LayerNorm")],
    "dropout_variance_ratio": [
        (lambda mean, var, p: np.ones_like(var) / (1 - p), "left out the mean"),
        (lambda mean, var, p: ((var + mean ** 2) / p - mean ** 2) / var, "KEEP"),
        (lambda mean, var, p: var / ((var + mean ** 2) / (1 - p) - mean ** 2), "test / train"),
        (lambda mean, var, p: (var * (1 - p) + mean ** 2 * p * (1 - p)) / var, "rescaling")],
    "combine_mean_var": [(_combine_plain_average, "same size"), (_combine_within_only, "misses how far"),
                         (_combine_unbiased, "n - 1")],
    "ghost_batchnorm": [(_ghost_whole_batch, "whole batch at once"), (_ghost_every_kth, "strided"),
                        (_ghost_last_gets_the_rest, "wrong sizes"), (_ghost_sample_variance, "unbiased")],
}


# --- the other kinds of answer, made from the right one ------------------------------------------

def outputs_of(data, result):
    return list(result) if isinstance(data.outputs, tuple) else [result]


def returning(data, outputs):
    return tuple(outputs) if isinstance(data.outputs, tuple) else outputs[0]


def with_first_output(change):
    """A learner's function: the right answer with `change` applied to its first output."""
    def make(data, right):
        def fn(*args):
            outputs = outputs_of(data, right(*args))
            outputs[0] = change(np.asarray(outputs[0], dtype=np.float64).copy())
            return returning(data, outputs)
        return fn
    return make


def set_first(value):
    def change(a):
        if a.ndim == 0:
            return float(value)
        a.flat[0] = value
        return a
    return change


def off_by(relative):
    def change(a):
        if a.ndim == 0:
            return float(a) + relative * max(1.0, abs(float(a)))
        a.flat[-1] += relative * max(1.0, abs(a.flat[-1]))
        return a
    return change


def in_float32(data, right):
    def fn(*args):
        args = [a.astype(np.float32) if isinstance(a, np.ndarray)
                else np.float32(a) if isinstance(a, float) else a for a in args]
        return returning(data, [np.float32(r) if np.ndim(r) == 0 else np.asarray(r, dtype=np.float32)
                                for r in outputs_of(data, right(*args))])
    return fn


def changing_its_input(data, right):
    def fn(*args):
        result = right(*(np.copy(a) if isinstance(a, np.ndarray) else a for a in args))
        name, arr = next((n, a) for n, a in zip(data.args, args)
                         if isinstance(a, np.ndarray) and n not in data.may_change)
        arr.flat[0] += 1
        return result
    return fn


def as_list(data, right):
    def fn(*args):
        result = right(*args)
        if isinstance(data.outputs, tuple):
            return list(result)
        return np.asarray(result).tolist() if np.ndim(result) else [result]
    return fn


def with_a_cache(data, right):
    def fn(*args):
        result = right(*args)
        return (*result, {"cache": None}) if isinstance(data.outputs, tuple) else (result, {"cache": None})
    return fn


def as_torch(data, right):
    return lambda *args: returning(data, [torch.tensor(r) for r in outputs_of(data, right(*args))])


def as_text(data, right):
    return lambda *args: returning(data, ["an answer" for _ in outputs_of(data, right(*args))])


def stub(*args):
    raise NotImplementedError


def raises_its_own(*args):
    raise ValueError("the learner's own message")


# kind of answer: (learner function made from (check data, right answer), PASS?, words said)
# PASS? None means PASS or not; a tuple of words means any one of them.
ANSWERS = {
    "right": (lambda data, right: right, True, ["PASS"]),
    "right but off by 1e-11": (with_first_output(off_by(1e-11)), True, ["PASS"]),
    "off by 1e-6": (with_first_output(off_by(1e-6)), False, [("off by", "you got")]),
    "stub": (lambda data, right: stub, False, ["not done yet"]),
    "NaN": (with_first_output(set_first(np.nan)), False, ["NaN"]),
    "inf": (with_first_output(set_first(np.inf)), False, ["inf"]),
    "None": (lambda data, right: lambda *args: None, False, ["None", "return"]),
    "wrong shape": (with_first_output(lambda a: np.stack([a, a])), False, ["shape"]),
    "(out, cache)": (with_a_cache, False, ["tuple"]),
    "list": (as_list, False, ["list"]),
    "torch tensor": (as_torch, False, ["torch tensor"]),
    "text": (as_text, False, ["str"]),
    "changed input": (changing_its_input, False, ["in place"]),
    "float32": (in_float32, None, [("PASS", "right to float32 precision")]),
    "own ValueError": (lambda data, right: raises_its_own, False,
                       ["ValueError", "the learner's own message", "raise ValueError(\"the learner's own message\")"]),
}

def takes_an_array(title):
    """Whether the learner's function gets an array it could change in place (some take numbers only)."""
    data = CHECKS[title][1]
    return any(isinstance(a, np.ndarray) and name not in data.may_change
               for case in data.cases() for name, a in zip(data.args, case))


PARAMS = [(title, kind) for title in CHECKS for kind in ANSWERS
          if kind != "changed input" or takes_an_array(title)] + \
         [(title, f"mistake: {words}") for title, mistakes in MISTAKES.items() for _, words in mistakes]


def answer(title, kind):
    """(learner function, PASS?, words the printed line must hold) for one kind of answer."""
    _, data, right = CHECKS[title]
    if kind.startswith("mistake: "):
        fn = next(fn for fn, words in MISTAKES[title] if words == kind[len("mistake: "):])
        return fn, False, [kind[len("mistake: "):]]
    make, passes, words = ANSWERS[kind]
    return make(data, right), passes, words


def run(title, fn, capsys):
    ok = CHECKS[title][0](fn)
    return ok, capsys.readouterr().out


@pytest.mark.parametrize("title, kind", PARAMS)
def test_every_check_tells_each_kind_of_answer(title, kind, capsys):
    fn, passes, words = answer(title, kind)
    data = CHECKS[title][1]
    ok, out = run(title, fn, capsys)
    assert isinstance(ok, bnlib.Verdict)
    assert out.startswith(f"{title}: ") and out.count("\n") == 1, out      # one line, the learner's name
    if passes is not None:
        assert bool(ok) == passes, out
    assert "PASS" not in out or ok, out
    for word in words:
        assert any(w in out for w in (word if isinstance(word, tuple) else (word,))), (word, out)
    if not kind.startswith("mistake"):
        assert not [hint for hint in data.mistakes if hint in out], out      # no right answer misnamed
    if kind not in ("own ValueError", "stub"):
        assert "raised" not in out, out                                    # the checker's crash is not blamed
    if passes:
        assert out == f"{title}: PASS\n"


# --- the catalogue ---------------------------------------------------------------------------

ALL_CHECKS = [v for v in vars(bnlib).values() if isinstance(v, bnlib.Check)]


def test_every_check_is_tested_here():
    assert sorted(c.title for c in ALL_CHECKS) == sorted(CHECKS)
    assert all(CHECKS[title][1].title == title for title in CHECKS)


@pytest.mark.parametrize("title", CHECKS)
def test_every_catalogued_mistake_is_named_by_one_mistake_written_here(title, capsys):
    data = CHECKS[title][1]
    said = [run(title, fn, capsys)[1] for fn, _ in MISTAKES[title]]
    assert len(said) == len(data.mistakes)
    for hint in data.mistakes:
        assert sum(hint in line for line in said) == 1, (hint, said)


@pytest.mark.parametrize("title", CHECKS)
def test_every_mistake_differs_from_the_reference_in_some_case(title):
    data = CHECKS[title][1]
    cases = data.cases()
    wants = [bnlib._expected(data, case) for case in cases]
    assert all(np.all(np.isfinite(w)) for want in wants for w in want)
    for hint, wrong in data.mistakes.items():
        with np.errstate(all="ignore"):
            wrongs = [outputs_of(data, wrong(*bnlib._copies(case))) for case in cases]
        assert max(bnlib._error(w, v) for want, got in zip(wants, wrongs) for w, v in zip(got, want)) \
            > bnlib.SEPARATION, hint


BNLIB_MATH = {"batchnorm_forward", "batchnorm_backward", "batchnorm_backward_steps", "batchnorm_inference",
              "groupnorm_forward", "groupnorm_backward", "layernorm_forward", "layernorm_backward",
              "fold_batchnorm", "channel_mean_std", "r2_linear_fit", "x_hat_in_random_batches",
              "BatchNorm", "GroupNorm", "LayerNorm", "ewma"}


def names_used(code, seen):
    """Every global name a function's code uses, following the module's own functions."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= names_used(const, seen)
    for name in list(names):
        fn = getattr(bnlib, name, None)
        if callable(fn) and hasattr(fn, "__code__") and name not in seen:
            seen.add(name)
            names |= names_used(fn.__code__, seen)
    return names


@pytest.mark.parametrize("title", CHECKS)
def test_references_use_pytorch_or_a_closed_form_never_bnlib_math(title):
    assert not names_used(CHECKS[title][1].reference.__code__, set()) & BNLIB_MATH


def test_nan_never_counts_as_close():
    assert bnlib._error(np.nan, 1.0) == np.inf and bnlib._error([1.0, np.nan], [1.0, 2.0]) == np.inf
    assert bnlib._error([np.nan], [np.nan]) == 0.0


# --- what the learner reads ------------------------------------------------------------------

def test_a_mistake_made_in_float32_is_still_named(capsys):
    fn = in_float32(bnlib.BATCHNORM_FORWARD, MISTAKES["batchnorm_forward"][0][0])
    ok, out = run("batchnorm_forward", fn, capsys)
    assert not ok and "unbiased" in out


def test_the_running_statistics_may_be_updated_in_place(capsys):
    def in_place(running_mean, running_var, x, momentum):
        n = len(x)
        running_mean *= 1 - momentum
        running_mean += momentum * x.mean(axis=0)
        running_var *= 1 - momentum
        running_var += momentum * x.var(axis=0) * n / (n - 1)
        return running_mean, running_var
    ok, out = run("update_running_stats", in_place, capsys)
    assert ok, out


def test_a_crash_inside_numpy_shows_the_learners_line(capsys):
    def forward(x, gamma, beta, eps):
        return np.linalg.inv(np.zeros((2, 2))) @ x
    ok, out = run("batchnorm_forward", forward, capsys)
    assert not ok and "LinAlgError" in out and "in forward" in out and "np.linalg.inv(np.zeros((2, 2))) @ x" in out


def test_a_not_implemented_error_from_a_library_is_not_taken_for_the_stub(capsys):
    library = {}
    exec(compile("def unsupported():\n    raise NotImplementedError('not for float64')\n",
                 os.path.join(sysconfig.get_paths()["purelib"], "some_library.py"), "exec"), library)

    def forward(x, gamma, beta, eps):
        return library["unsupported"]()
    ok, out = run("batchnorm_forward", forward, capsys)
    assert not ok and "not done yet" not in out
    assert "NotImplementedError: not for float64" in out and "library[\"unsupported\"]()" in out


def test_a_function_with_other_parameters_is_told_how_it_is_called(capsys):
    ok, out = run("batchnorm_forward", lambda x, gamma: x, capsys)
    assert not ok and "TypeError" in out and "batchnorm_forward(x, gamma, beta, eps)" in out


def test_passing_the_result_instead_of_the_function_is_explained(capsys):
    ok, out = run("line_fit_r2", 0.97, capsys)
    assert not ok and "function itself" in out


def test_a_mistake_and_an_unrelated_error_together_name_the_mistake(capsys):
    def two_errors(W, b, gamma, beta, mean, var, eps):                   # no eps in W, and b is off
        return W * gamma / np.sqrt(var), b
    ok, out = run("fold_linear_bn", two_errors, capsys)
    assert not ok and "ignores eps" in out


@pytest.mark.parametrize("odd", [np.array([1.0, None]), {"out": 1.0}, object(), np.array(["a", "b"]),
                                 np.array([1 + 2j]), [[1.0], [2.0, 3.0]], (np.ones(2), [1, "a"])])
@pytest.mark.parametrize("title", ["batchnorm_forward", "fold_linear_bn", "x_hat_of_example"])
def test_an_odd_result_gets_a_sentence_not_a_crash(title, odd, capsys):
    data = CHECKS[title][1]
    result = (odd, odd) if isinstance(data.outputs, tuple) else odd
    ok, out = run(title, lambda *args: result, capsys)
    assert not ok and out.startswith(f"{title}: not yet. ") and out.count("\n") == 1, out


@pytest.mark.parametrize("title", CHECKS)
def test_a_float32_answer_wrong_beyond_float32_precision_is_not_called_right(title, capsys):
    data, right = CHECKS[title][1], CHECKS[title][2]
    fn = in_float32(data, with_first_output(off_by(1e-3))(data, right))
    ok, out = run(title, fn, capsys)
    assert not ok and "precision" not in out and ("off by" in out or "you got" in out or
                                                  any(hint in out for hint in data.mistakes)), out


def test_keras_running_var_reference_matches_torch_and_the_keras_recursion():
    """The closed form behind check_keras_running_var, on real batches: PyTorch's BatchNorm1d with
    momentum 1 - k against Keras's recursion with the biased variance, written here in numpy."""
    rng = np.random.default_rng(5)
    k, m, steps = 0.9, 5, 12
    bn = torch.nn.BatchNorm1d(3, momentum=1 - k, dtype=torch.float64)
    keras = np.ones(3)
    for _ in range(steps):
        x = rng.normal(2.0, 3.0, size=(m, 3))
        bn(torch.from_numpy(x))
        keras = k * keras + (1 - k) * x.var(axis=0)
    got = bnlib.KERAS_RUNNING_VAR.reference(bn.running_var.numpy(), m, steps, k)
    np.testing.assert_allclose(got, keras, rtol=1e-12)
