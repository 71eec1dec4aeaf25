"""Inputs several test files share: batches of activations with BN parameters, seeded, and the
helper that reads a ValueError's message. Plain numpy; no expected values come from here."""
import numpy as np
import pytest


def random_case(shape, seed=0, dtype=np.float64, loc=3.0, scale=2.5):
    """(x, gamma, beta, dout): x ~ N(loc, scale^2) of `shape`, gamma, beta of shape[1] channels."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.normal(loc, scale, size=shape)).astype(dtype)
    gamma = rng.normal(1.0, 0.5, size=c).astype(dtype)
    beta = rng.normal(0.0, 1.0, size=c).astype(dtype)
    dout = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dout


def batch(shape, seed=0):
    """float64 activations with features of different means and scales, plus params and dout."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    spread = np.linspace(0.5, 3.0, c).reshape((1, c) + (1,) * (len(shape) - 2))
    x = rng.standard_normal(shape) * spread + 2.0
    return x, 1.0 + rng.random(c), rng.standard_normal(c), rng.standard_normal(shape)


def perturb_norm_params(model, rng, scale=0.3):
    """Move every norm layer's gamma and beta off (1, 0), in place, so tests see non-trivial ones."""
    for layer in model.norms:
        layer.gamma += rng.normal(0, scale, size=layer.gamma.shape)
        layer.beta += rng.normal(0, scale, size=layer.beta.shape)
    return model


def error_of(fn, *args, **kwargs):
    """The message of the ValueError that fn(*args, **kwargs) must raise."""
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)
