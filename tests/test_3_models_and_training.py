"""bnlib section 3, models and training: MLP gradients against PyTorch autograd, training on
MNIST, test accuracy in eval mode, accuracy over batches, and precise BN statistics against
torch.optim.swa_utils.update_bn."""
import copy

import numpy as np
import pytest
import torch

import bnlib
from cases import perturb_norm_params
from torch_reference import hidden_layers_as_sequential, mlp_grads


# --- MLP --------------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["sigmoid", "relu", "linear"])
@pytest.mark.parametrize("norm", [None, "batch"])
def test_mlp_gradients_match_torch_autograd(activation, norm):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 12)), rng.integers(0, 4, size=16)
    model = bnlib.MLP([12, 9, 7, 4], activation=activation, norm=norm, seed=1, dtype=np.float64)
    perturb_norm_params(model, rng)  # non-trivial gamma and beta
    loss, dlogits = bnlib.softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    loss_ref, grads_ref = mlp_grads(model, x, y)
    assert abs(loss - loss_ref) < 1e-12
    for name, _, grad in model.parameters():
        assert np.max(np.abs(grad - grads_ref[name])) < 1e-10, name


@pytest.mark.parametrize("name", ["layer", "group"])
def test_mlp_with_layer_or_group_norm_gradients_match_torch_autograd(name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 12)), rng.integers(0, 4, size=6)
    model = bnlib.MLP([12, 16, 24, 4], activation="relu", norm=name, seed=1, dtype=np.float64)
    perturb_norm_params(model, rng)
    _, dlogits = bnlib.softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    _, ref = mlp_grads(model, x, y)
    for pname, _, grad in model.parameters():
        assert np.max(np.abs(grad - ref[pname])) < 1e-10, pname


def test_layers_before_batchnorm_have_no_bias():
    model = bnlib.MLP([4, 3, 2], norm="batch")
    assert model.linears[0].b is None and model.linears[-1].b is not None


def test_mlp_builds_noisy_bn_layers_by_name():
    model = bnlib.MLP([6, 4, 4, 3], activation="sigmoid", norm="noisy_batch")
    assert len(model.norms) == 2 and all(isinstance(l, bnlib.NoisyBatchNorm) for l in model.norms)
    assert model.linears[0].b is None


def test_mlp_gives_each_noisy_bn_layer_its_own_noise():
    model = bnlib.MLP([20, 8, 8, 8, 3], activation="relu", norm="noisy_batch", seed=0)
    x = np.random.default_rng(0).standard_normal((16, 20))
    model(x)
    gains = [layer.gain for layer in model.norms]
    assert not np.allclose(gains[0], gains[1]) and not np.allclose(gains[1], gains[2])


def test_unknown_activation_or_norm_is_refused():
    with pytest.raises(ValueError, match="activation"):
        bnlib.MLP([4, 2], activation="tanhh")
    with pytest.raises(ValueError, match="norm"):
        bnlib.MLP([4, 2], norm="batchnorm")


# --- training and accuracy --------------------------------------------------------------------

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


def _bn_model():
    return bnlib.MLP([784, 32, 10], activation="relu", norm="batch", seed=0)


def _zeros_only_test_set():
    """40 test images of the digit 0: one class, so a batch's own statistics describe only it."""
    X_test, y_test = bnlib.load_mnist(train=False)
    return X_test[y_test == 0][:40], y_test[y_test == 0][:40]


def test_train_model_measures_test_accuracy_in_eval_mode():
    X, y = bnlib.load_mnist(train=True)
    X_test, y_test = _zeros_only_test_set()
    hist = bnlib.train_model(_bn_model(), X, y, steps=100, batch_size=32, lr=0.1,
                             X_test=X_test, y_test=y_test, eval_every=50, progress=False)
    want = []
    for steps in (50, 100):                      # the same seed draws the same batches: the same model
        replica = _bn_model()
        bnlib.train_model(replica, X, y, steps=steps, batch_size=32, lr=0.1, progress=False)
        eval_acc = bnlib.accuracy(copy.deepcopy(replica).eval(), X_test, y_test)
        train_acc = bnlib.accuracy(copy.deepcopy(replica).train(), X_test, y_test)
        assert abs(eval_acc - train_acc) > 0.3   # the test set tells the two modes apart
        want.append(eval_acc)
    assert hist["eval_step"] == [50, 100]
    assert hist["test_acc"] == want


def test_train_model_leaves_the_model_in_training_mode():
    X, y = bnlib.load_mnist(train=True)
    X_test, y_test = _zeros_only_test_set()
    model = _bn_model()
    bnlib.train_model(model, X, y, steps=5, batch_size=32, X_test=X_test, y_test=y_test,
                      eval_every=5, progress=False)
    assert all(layer.training for layer in model.norms)


class _LogitsAreTheInput:
    """A stand-in model whose logits are its input rows; it records the batch sizes it is sent."""

    def __init__(self):
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(len(x))
        return x


def test_accuracy_counts_the_partial_last_batch():
    # 10 examples in batches of 4, 4 and 2; by hand: rows 0, 2, 4, 5, 7 and both rows of the
    # last batch (8, 9) have their label's logit largest, 7 of 10.
    labels_of_largest = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 1])
    y = np.array([0, 0, 1, 1, 1, 0, 0, 1, 0, 1])
    X = np.eye(2)[labels_of_largest]
    model = _LogitsAreTheInput()
    assert bnlib.accuracy(model, X, y, batch_size=4) == 0.7
    assert model.batch_sizes == [4, 4, 2]


# --- precise BN statistics --------------------------------------------------------------------

def trained_like_bn_mlp_and_torch_copy(X):
    rng = np.random.default_rng(0)
    model = bnlib.MLP([10, 8, 6, 3], activation="relu", norm="batch", seed=2, dtype=np.float64)
    perturb_norm_params(model, rng)
    return model, hidden_layers_as_sequential(model)


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


# --- careless input (issue "No silent wrong answers") ---------------------------------------

def test_train_model_refuses_labels_that_do_not_match_the_examples():
    model = bnlib.MLP([4, 3, 2])
    with pytest.raises(ValueError, match="one label per row"):
        bnlib.train_model(model, np.zeros((5, 4)), np.zeros(4, dtype=int), steps=2, progress=False)


def test_softmax_cross_entropy_refuses_label_minus_one_instead_of_reading_the_last_class():
    with pytest.raises(ValueError, match="0..9"):
        bnlib.softmax_cross_entropy(np.zeros((2, 10)), np.array([3, -1]))


def test_softmax_cross_entropy_refuses_fractional_labels():
    with pytest.raises(TypeError, match="integer class labels"):
        bnlib.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.5, 1.0]))


def test_train_model_refuses_labels_beyond_the_models_classes():
    model = bnlib.MLP([4, 3, 2])
    with pytest.raises(ValueError, match="0..1"):
        bnlib.train_model(model, np.zeros((3, 4)), np.array([0, 1, 2]), steps=1, progress=False)


def test_divergence_caught_by_a_layer_check_ends_the_run_as_diverged():
    X, y = bnlib.load_mnist(train=True)
    model = bnlib.MLP([784, 50, 50, 10], activation="relu", seed=0)
    hist = bnlib.train_model(model, X, y, steps=60, lr=1e4, progress=False)   # float32 overflows
    assert hist["diverged"] and len(hist["loss"]) < 60 and not np.isfinite(hist["loss"][-1])
    with pytest.raises(bnlib.NotFiniteError, match="Linear.forward: x contains NaN or inf"):
        model.forward(np.full((2, 784), np.inf))
