"""Every public function of bnlib, tried as a careless learner would: a list, ints, float16,
an empty array, a batch of one, NaN, inf, a wrong shape, a wrong type. Each gives either a
finite result or an error that bnlib raises on purpose (the innermost frame is bnlib's own
code, and the message names the function), never a silent NaN and never a crash deep inside
numpy. Where a result is right for an input (ints, a list, a batch of one in eval mode),
it is the same as for the float64 array."""
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

import bnlib

BNLIB = str(Path(bnlib.__file__).resolve())
RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 3)).round(2) * 4           # .round: ints and float16 hold it closely
G, B = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
OUT, CACHE = bnlib.batchnorm_forward(X, G, B)
X4 = RNG.normal(size=(4, 3, 2, 2)).round(2)
_, GN_CACHE = bnlib.groupnorm_forward(X4, G, B, 3)
_, LN_CACHE = bnlib.layernorm_forward(X, G, B)
Y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
DIGITS, Y4 = RNG.random((4, 784)).round(2), np.array([3, 1, 4, 1])      # for notebook 05's conv nets


def careless(a):
    """name -> a careless version of the array a."""
    first = np.arange(a.size).reshape(a.shape) == 0
    return {"list": a.tolist(), "ints": a.round().astype(int), "float16": a.astype(np.float16),
            "empty": a[:0], "batch of one": a[:1], "NaN": np.where(first, np.nan, a),
            "inf": np.where(first, np.inf, a), "wrong shape": a.reshape(-1)[:-1],
            "text": "x", "None": None}


def eval_bn(x):
    bn = bnlib.BatchNorm(3).eval()
    return bn.forward(x)


def mlp_forward(x):
    return bnlib.MLP([3, 4, 2], norm="batch", seed=0).forward(x)


def grad_of_sum_of_squares(x):
    return bnlib.numerical_gradient(lambda v: v ** 2, x, np.ones(np.shape(x)))


# name: (function of the careless array, the good array)
FUNCTIONS = {
    "batchnorm_forward": (lambda x: bnlib.batchnorm_forward(x, G, B)[0], X),
    "batchnorm_backward": (lambda d: bnlib.batchnorm_backward(d, CACHE), X),
    "batchnorm_backward_steps": (lambda d: bnlib.batchnorm_backward_steps(d, CACHE), X),
    "batchnorm_inference": (lambda x: bnlib.batchnorm_inference(x, G, B, np.zeros(3), np.ones(3)), X),
    "channel_mean_std": (bnlib.channel_mean_std, X),
    "groupnorm_forward": (lambda x: bnlib.groupnorm_forward(x, G, B, 3)[0], X4),
    "groupnorm_backward": (lambda d: bnlib.groupnorm_backward(d, GN_CACHE), X4),
    "layernorm_forward": (lambda x: bnlib.layernorm_forward(x, G, B)[0], X),
    "layernorm_backward": (lambda d: bnlib.layernorm_backward(d, LN_CACHE), X),
    "fold_batchnorm": (lambda W: bnlib.fold_batchnorm(W, B, G, B, np.zeros(3), np.ones(3)), X),
    "BatchNorm.forward (training)": (lambda x: bnlib.BatchNorm(3).forward(x), X),
    "BatchNorm.forward (eval)": (eval_bn, X),
    "GroupNorm.forward": (lambda x: bnlib.GroupNorm(3, num_groups=3).forward(x), X4),
    "LayerNorm.forward": (lambda x: bnlib.LayerNorm(3).forward(x), X),
    "NoisyBatchNorm.forward": (lambda x: bnlib.NoisyBatchNorm(3).forward(x), X),
    "BatchRenorm.forward (training)": (lambda x: bnlib.BatchRenorm(3).forward(x), X),
    "BatchRenorm.forward (eval)": (lambda x: bnlib.BatchRenorm(3).eval().forward(x), X),
    "sigmoid": (bnlib.sigmoid, X),
    "MLP.forward": (mlp_forward, X),
    "softmax_cross_entropy": (lambda z: bnlib.softmax_cross_entropy(z, Y), X),
    "rel_error": (lambda a: bnlib.rel_error(X, a), X),
    "numerical_gradient": (grad_of_sum_of_squares, X),
    "logreg_loss": (lambda Xc: bnlib.logreg_loss(np.zeros(3), Xc, Y), X),
    "logreg_grad": (lambda Xc: bnlib.logreg_grad(np.zeros(3), Xc, Y), X),
    "logreg_hessian": (lambda Xc: bnlib.logreg_hessian(np.zeros(3), Xc, Y), X),
    "gd_path": (lambda Xc: bnlib.gd_path(Xc, Y, np.zeros(3), 0.1, 3)[1], X),
    "gd_sweep": (lambda Xc: bnlib.gd_sweep(Xc, Y, [0.1, 0.2], 3)[1], X),
    "gd_sweep (lrs)": (lambda lrs: bnlib.gd_sweep(X, Y, lrs, 3)[1], np.array([0.1, 0.2])),
    "steps_to_settle": (lambda losses: bnlib.steps_to_settle(losses, 0.5), np.array([0.9, 0.4, 0.3])),
    "logreg_condition_number": (lambda Xc: bnlib.logreg_condition_number(Xc, Y), X + RNG.normal(size=X.shape)),
    "last_hidden_layer": (lambda x: bnlib.last_hidden_layer(bnlib.MLP([3, 4, 1], "sigmoid"), x), X),
    "ink_and_width": (lambda imgs: bnlib.ink_and_width(imgs), RNG.random((4, 784))),
    "r2_linear_fit": (lambda z: bnlib.r2_linear_fit(z, np.arange(8.0) ** 2), X[:, 0]),
    "sigmoid_linearity": (bnlib.sigmoid_linearity, X),
    "ewma": (lambda v: bnlib.ewma(v, 0.1), X),
    "x_hat_in_random_batches": (lambda x: bnlib.x_hat_in_random_batches(x, 0, 4, 5), X[:, 0]),
    "effective_values": (lambda m: bnlib.effective_values(m, 2, n_batches=50), X4),
    "conv_nets_side_by_side": (lambda s: bnlib.side_by_side_accuracy(bnlib.conv_nets_side_by_side(s), DIGITS,
                                                                     Y4), np.array([0.0, 1.0])),
    "train_side_by_side": (lambda Xc: bnlib.train_side_by_side(bnlib.conv_nets_side_by_side([0]), Xc, Y4,
                                                               [0.01], 1, 2), DIGITS),
    "side_by_side_accuracy": (lambda Xc: bnlib.side_by_side_accuracy(bnlib.conv_nets_side_by_side([0]), Xc, Y4),
                              DIGITS),
    "per_device_batchnorm": (lambda x: bnlib.per_device_batchnorm(x, G, B, np.ones((8, 3)), 2), X),
    "synced_batchnorm": (lambda x: bnlib.synced_batchnorm(x, G, B, np.ones((8, 3)), 1), X),   # 1 worker process
}
KINDS = list(careless(X))


def outcome(fn, arg):
    """('result', value) or ('error', exception), with numpy's warnings turned into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return "result", fn(arg)
        except Exception as exc:                       # noqa: BLE001 - what we inspect
            return "error", exc


def finite(value):
    values = value if isinstance(value, tuple) else (value,)
    return all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in values
               if v is not None and not isinstance(v, dict))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_careless_input_gets_a_finite_result_or_our_own_clear_error(name, kind):
    fn, good = FUNCTIONS[name]
    arg = careless(good)[kind]
    what, value = outcome(fn, arg)
    if what == "error":
        frame = traceback.extract_tb(value.__traceback__)[-1]
        assert Path(frame.filename).resolve() == Path(BNLIB), \
            f"{name}({kind}) crashed inside {frame.filename}:{frame.lineno}: {value!r}"
        assert frame.line.startswith("raise "), \
            f"{name}({kind}): numpy's own error from bnlib's line {frame.lineno} ({frame.line}): {value!r}"
        assert isinstance(value, (ValueError, TypeError, RuntimeError)), repr(value)
        assert len(str(value)) > 30, f"{name}({kind}): a message this short says little: {value}"
    elif name == "rel_error" and kind in ("NaN", "inf"):
        assert value == np.inf                          # NaN, or inf against a number, is never close
    else:
        assert finite(value), f"{name}({kind}) returned NaN or inf without a word"


@pytest.mark.parametrize("kind", ["list", "ints"])
@pytest.mark.parametrize("name", [n for n in FUNCTIONS if n != "numerical_gradient"])
def test_a_list_or_ints_give_the_float64_answer_or_a_clear_error(name, kind):
    fn, good = FUNCTIONS[name]
    what, value = outcome(fn, careless(good)[kind])
    if what == "result":
        arg = np.asarray(careless(good)[kind], dtype=np.float64)
        want = fn(arg)
        got, want = (v if isinstance(v, tuple) else (v,) for v in (value, want))
        for g, w in zip(got, want):
            if not isinstance(w, dict):
                np.testing.assert_allclose(np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64),
                                           rtol=1e-6, atol=1e-9)


def outcome_table():
    """The note's table: function x careless input -> 'ok' or the start of our message."""
    rows = []
    for name, (fn, good) in FUNCTIONS.items():
        cells = []
        for kind in KINDS:
            what, value = outcome(fn, careless(good)[kind])
            cells.append("ok" if what == "result" else f"{type(value).__name__}")
        rows.append((name, cells))
    return rows


if __name__ == "__main__":
    print("| function | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    for name, cells in outcome_table():
        print(f"| {name} | " + " | ".join(cells) + " |")
