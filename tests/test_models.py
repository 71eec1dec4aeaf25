"""bnlib's small models: gradients against PyTorch autograd, training on MNIST."""
import numpy as np
import pytest
import torch

import bnlib
from torch_reference import mlp_grads


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "linear"])
@pytest.mark.parametrize("norm", [None, "batch"])
def test_mlp_gradients_match_torch_autograd(activation, norm):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 12)), rng.integers(0, 4, size=16)
    model = bnlib.MLP([12, 9, 7, 4], activation=activation, norm=norm, seed=1, dtype=np.float64)
    for layer in model.norms:  # non-trivial gamma and beta
        layer.gamma += rng.normal(0, 0.3, size=layer.gamma.shape)
        layer.beta += rng.normal(0, 0.3, size=layer.beta.shape)
    loss, dlogits = bnlib.softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    loss_ref, grads_ref = mlp_grads(model, x, y)
    assert abs(loss - loss_ref) < 1e-12
    for name, _, grad in model.parameters():
        assert np.max(np.abs(grad - grads_ref[name])) < 1e-10, name


def test_layers_before_batchnorm_have_no_bias():
    model = bnlib.MLP([4, 3, 2], norm="batch")
    assert model.linears[0].b is None and model.linears[-1].b is not None


def test_training_on_mnist_reaches_high_test_accuracy():
    X, y = bnlib.load_mnist(train=True)
    X_test, y_test = bnlib.load_mnist(train=False)
    for norm in (None, "batch"):
        model = bnlib.MLP([784, 50, 10], activation="relu", norm=norm, seed=0)
        hist = bnlib.train_model(model, X, y, steps=400, batch_size=64, lr=0.1,
                                 X_test=X_test, y_test=y_test, eval_every=400, progress=False)
        assert hist["test_acc"][-1] > 0.85, norm


def test_training_reports_divergence_instead_of_nan():
    X, y = bnlib.load_mnist(train=True)
    model = bnlib.MLP([784, 50, 10], activation="linear", seed=0)  # a linear net blows up fast
    hist = bnlib.train_model(model, X, y, steps=50, lr=5.0, progress=False)
    assert hist["diverged"] and len(hist["loss"]) < 50


def test_unknown_activation_or_norm_is_refused():
    with pytest.raises(ValueError, match="activation"):
        bnlib.MLP([4, 2], activation="tanhh")
    with pytest.raises(ValueError, match="norm"):
        bnlib.MLP([4, 2], norm="batchnorm")
