"""bnlib: the small numpy library behind the Batch Normalization course.

Every notebook imports this file; each function is explained once, in the
notebook that introduces it, and reused everywhere else. Sections:

1. The math of batch normalization (forward, backward, inference)
2. The BatchNorm layer with running statistics (PyTorch's conventions)
3. Checking tools (relative error, finite differences, exercise checks)
4. Data (the MNIST subset shipped in data/)
5. Small models and training loops
6. Plots and widgets

Notation follows Ioffe & Szegedy (2015), "Batch Normalization: Accelerating
Deep Network Training by Reducing Internal Covariate Shift", arXiv 1502.03167:
for one feature, over a batch of m values x_i,

    mu = mean(x),  var = mean((x - mu)^2),  invstd = 1 / sqrt(var + eps),
    x_hat = (x - mu) * invstd,               out = gamma * x_hat + beta.

Arrays are (N, D) (one statistic per feature, i.e. per column) or
(N, C, H, W) (one statistic per channel, over N, H and W).
"""
import hashlib
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------------------
# 1. The math of batch normalization
# ---------------------------------------------------------------------------

def _channel_view(x, caller):
    """x seen as (N, D), or (N, C, H*W) for (N, C, H, W) (a view, no copy).

    Returns (view, axes, param_shape): the axes that hold one feature's or one
    channel's batch, (0,) or (0, 2), and the shape a per-channel array takes to
    broadcast against the view, (D,) or (1, C, 1).
    """
    if x.ndim == 2:
        return x, (0,), (x.shape[1],)
    if x.ndim == 4:
        n, c = x.shape[:2]
        return x.reshape(n, c, -1), (0, 2), (1, c, 1)
    raise ValueError(
        f"{caller}: x must be 2-D (N, D) or 4-D (N, C, H, W), got shape {x.shape} "
        f"({x.ndim}-D). Reshape it, e.g. x.reshape(len(x), -1) for a batch of vectors.")


def _as_float_array(x, caller, name="x"):
    """x as a floating numpy array (ints become float64)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{caller}: {name} must hold numbers, got dtype {x.dtype}.")
        x = x.astype(np.float64)
    return x


def _check_finite(values, caller):
    if not np.isfinite(values).all():
        raise ValueError(f"{caller}: x contains NaN or inf; check the layer before "
                         "(a diverging learning rate is the usual cause).")


def _param(p, name, x, caller):
    """gamma, beta or a running statistic as a (C,) array of x's dtype, shape checked."""
    channels = x.shape[1]
    p = np.asarray(p, dtype=x.dtype)
    if p.shape != (channels,):
        raise ValueError(
            f"{caller}: {name} must have shape ({channels},), one value per "
            f"{'feature' if x.ndim == 2 else 'channel'} of x {x.shape}; got {p.shape}.")
    return p


def _check_eps(eps, caller):
    if not eps > 0:
        raise ValueError(f"{caller}: eps must be > 0 (it keeps 1/sqrt(var + eps) finite "
                         f"for a constant feature); got {eps}. PyTorch uses 1e-5.")


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Batch normalization with batch statistics (training mode).

    x: (N, D) or (N, C, H, W). gamma, beta: (D,) or (C,).
    Statistics per feature (column) or per channel (over N, H, W); m values each:
        mu = mean(x), var = mean((x - mu)^2)  (biased, 1/m), invstd = 1/sqrt(var + eps)
        x_hat = (x - mu) * invstd,  out = gamma * x_hat + beta
    Returns (out, cache): out has x's shape and dtype; cache is what
    batchnorm_backward and batchnorm_backward_steps need (for 4-D x its arrays
    are kept in the (N, C, H*W) view).
    """
    caller = "batchnorm_forward"
    x = _as_float_array(x, caller)
    xv, axes, pshape = _channel_view(x, caller)
    _check_eps(eps, caller)
    gamma = _param(gamma, "gamma", x, caller).reshape(pshape)
    beta = _param(beta, "beta", x, caller).reshape(pshape)
    m = x.size // x.shape[1]
    if m == 1:
        raise ValueError(
            f"{caller}: Expected more than 1 value per channel when training, got input of "
            f"shape {x.shape}. A batch of one example has variance 0: use eval mode "
            "(running statistics, BatchNorm.eval()) or a batch larger than 1.")
    mu = xv.mean(axis=axes, keepdims=True)
    _check_finite(mu, caller)                     # a NaN or inf in x shows in its mean
    xc = xv - mu                                  # two passes: never E[x^2] - E[x]^2
    var = np.mean(np.square(xc), axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = xc * invstd
    out = x_hat * gamma
    out += beta
    cache = {"x_hat": x_hat, "xc": xc, "var": var, "invstd": invstd, "gamma": gamma,
             "eps": eps, "axes": axes, "mu": mu, "shape": x.shape}
    return out.reshape(x.shape), cache


def _dout_view(dout, cache, caller):
    dout = np.asarray(dout, dtype=cache["x_hat"].dtype)
    if dout.shape != cache["shape"]:
        raise ValueError(f"{caller}: dout must have the forward output's shape "
                         f"{cache['shape']}, got {dout.shape}.")
    return dout.reshape(cache["x_hat"].shape)


def batchnorm_backward(dout, cache):
    """Gradients of batch normalization, compact form.

    dout: upstream gradient, the shape of out. Returns (dx, dgamma, dbeta) with
    dx of x's shape and dgamma, dbeta of shape (D,) or (C,):
        dbeta  = sum(dout),  dgamma = sum(dout * x_hat)
        dx = gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma)
    (sums over the m values of each feature or channel).
    """
    x_hat, invstd, gamma, axes = cache["x_hat"], cache["invstd"], cache["gamma"], cache["axes"]
    dout = _dout_view(dout, cache, "batchnorm_backward")
    m = x_hat.size // x_hat.shape[1]
    dbeta = dout.sum(axis=axes, keepdims=True)
    dgamma = np.sum(dout * x_hat, axis=axes, keepdims=True)
    # dx = gamma * invstd * (dout - dbeta / m - x_hat * dgamma / m), updated in place
    dx = x_hat * (dgamma / m)
    dx += dbeta / m
    np.subtract(dout, dx, out=dx)
    dx *= gamma * invstd
    return dx.reshape(cache["shape"]), dgamma.ravel(), dbeta.ravel()


def batchnorm_backward_steps(dout, cache):
    """The same gradients as batchnorm_backward, node by node through the graph.

    Forward graph: mu = mean(x); xc = x - mu; var = mean(xc^2);
    std = sqrt(var + eps); invstd = 1/std; x_hat = xc * invstd; out = gamma*x_hat + beta.
    Each line below is one node's local gradient times the upstream gradient.
    Returns (dx, dgamma, dbeta).
    """
    x_hat, xc, var, eps = cache["x_hat"], cache["xc"], cache["var"], cache["eps"]
    gamma, invstd, axes = cache["gamma"], cache["invstd"], cache["axes"]
    dout = _dout_view(dout, cache, "batchnorm_backward_steps")
    m = x_hat.size // x_hat.shape[1]
    dbeta = dout.sum(axis=axes, keepdims=True)               # out = ... + beta
    dgamma = np.sum(dout * x_hat, axis=axes, keepdims=True)  # out = gamma * x_hat + ...
    dx_hat = dout * gamma
    dinvstd = np.sum(dx_hat * xc, axis=axes, keepdims=True)  # x_hat = xc * invstd
    dxc = dx_hat * invstd
    std = np.sqrt(var + eps)
    dstd = -dinvstd / std**2                                  # invstd = 1 / std
    dvar = dstd * 0.5 / std                                   # std = sqrt(var + eps)
    dxc = dxc + dvar * 2.0 * xc / m                           # var = mean(xc^2)
    dmu = -np.sum(dxc, axis=axes, keepdims=True)              # xc = x - mu
    dx = dxc + dmu / m                                        # mu = mean(x)
    return dx.reshape(cache["shape"]), dgamma.ravel(), dbeta.ravel()


def batchnorm_inference(x, gamma, beta, mean, var, eps=1e-5):
    """Batch normalization with fixed statistics (eval mode): an affine map per feature.

    x: (N, D) or (N, C, H, W); gamma, beta, mean, var: (D,) or (C,).
        out = gamma * (x - mean) / sqrt(var + eps) + beta
    """
    caller = "batchnorm_inference"
    x = _as_float_array(x, caller)
    _check_finite(x, caller)
    _, _, pshape = _channel_view(x, caller)
    _check_eps(eps, caller)
    shape = (1, x.shape[1], 1, 1) if x.ndim == 4 else pshape
    gamma, beta, mean, var = (_param(p, name, x, caller).reshape(shape) for p, name in
                              ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var")))
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


# ---------------------------------------------------------------------------
# 2. The BatchNorm layer with running statistics
# ---------------------------------------------------------------------------

class BatchNorm:
    """A batch normalization layer with PyTorch's conventions.

    BatchNorm(num_features, eps=1e-5, momentum=0.1) for x of shape (N, D) with
    D = num_features, or (N, C, H, W) with C = num_features.

    Training mode (the default): normalize with the batch mean and the biased
    batch variance, then update the running statistics, momentum weighting
    the NEW value (as torch.nn.BatchNorm1d/2d):
        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
    where m is the number of values per feature (the unbiased variance is stored).
    Eval mode: normalize with running_mean and running_var.

    Attributes: gamma, beta (learned, start at 1 and 0), running_mean (starts
    at 0), running_var (starts at 1), training; after backward, dgamma, dbeta.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"BatchNorm: num_features must be a positive integer, got {num_features!r}.")
        _check_eps(eps, "BatchNorm")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"BatchNorm: momentum must be in [0, 1] (PyTorch's convention: the weight "
                f"of the NEW batch statistic, default 0.1), got {momentum}. Keras's "
                f"momentum=0.99 weights the old value: use 1 - 0.99 = 0.01 here.")
        self.num_features, self.eps, self.momentum = int(num_features), eps, momentum
        self.gamma = np.ones(self.num_features)
        self.beta = np.zeros(self.num_features)
        self.running_mean = np.zeros(self.num_features)
        self.running_var = np.ones(self.num_features)
        self.training = True
        self.dgamma = self.dbeta = self._cache = None

    def train(self):
        """Switch to training mode (batch statistics, running statistics updated)."""
        self.training = True
        return self

    def eval(self):
        """Switch to eval mode (running statistics, nothing updated)."""
        self.training = False
        return self

    def forward(self, x):
        """Normalize x, (N, num_features) or (N, num_features, H, W); returns out of x's shape."""
        x = np.asarray(x)
        if x.ndim in (2, 4) and x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm: this layer has {self.num_features} features, but x of shape "
                f"{x.shape} has {x.shape[1]} in axis 1. Build the layer as "
                f"BatchNorm({x.shape[1]}) or check the layer that feeds it.")
        if not self.training:
            return batchnorm_inference(x, self.gamma, self.beta, self.running_mean,
                                       self.running_var, self.eps)
        out, self._cache = batchnorm_forward(x, self.gamma, self.beta, self.eps)
        m = out.size // self.num_features
        mu, var = self._cache["mu"].ravel(), self._cache["var"].ravel()
        self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mu
        self.running_var = (1 - self.momentum) * self.running_var + self.momentum * var * m / (m - 1)
        return out

    __call__ = forward

    def backward(self, dout):
        """Gradient of the last training-mode forward; returns dx, stores dgamma and dbeta."""
        if self._cache is None:
            raise ValueError("BatchNorm.backward: call forward in training mode first "
                             "(eval mode keeps nothing for a backward pass).")
        dx, self.dgamma, self.dbeta = batchnorm_backward(dout, self._cache)
        return dx

    def __repr__(self):
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"training={self.training})")


# ---------------------------------------------------------------------------
# 3. Checking tools
# ---------------------------------------------------------------------------

def rel_error(a, b):
    """Largest elementwise relative error: max |a - b| / max(1e-8, |a| + |b|).

    As in CS231n: below 1e-7 is right in float64; 1e-2 or more is almost surely a bug.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}.")
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def numerical_gradient(f, x, dout, h=1e-5):
    """Centered finite differences of sum(f(x) * dout) with respect to x.

    f: function of an array of x's shape. x: float array, changed in place
    during the loop and restored. Returns an array of x's shape:
        grad[i] = (sum(f(x + h e_i) * dout) - sum(f(x - h e_i) * dout)) / (2h)
    Use float64: in float32 the rounding error swamps the difference.
    """
    x = np.asarray(x)
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = np.sum(f(x) * dout)
        x[i] = old - h
        minus = np.sum(f(x) * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def compare(name, ours, reference, tol=1e-10):
    """Print one line a learner reads at a glance: do two arrays agree within tol?

    The line gives a bound (deterministic across machines), not the noisy exact
    difference. Returns True when max |ours - reference| < tol.
    """
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        print(f"{name:<34} DIFFERENT shapes {ours.shape} vs {reference.shape}")
        return False
    diff = float(np.max(np.abs(ours - reference))) if ours.size else 0.0
    if diff < tol:
        print(f"{name:<34} agree   (max |diff| < {tol:.0e})")
        return True
    print(f"{name:<34} DIFFER  (max |diff| = {diff:.3g}, tolerance {tol:.0e})")
    return False


class CheckFailed(Exception):
    """Raised inside a check to report what is wrong with a learner's answer."""


def run_check(title, check):
    """Run check() and print 'PASS' or what is wrong, never a bare traceback.

    check: a function that raises CheckFailed (or AssertionError) with a
    message for the learner. A NotImplementedError from the learner's stub
    means "not done yet". Returns True on pass.
    """
    try:
        check()
    except NotImplementedError:
        print(f"{title}: not done yet. Replace the `raise NotImplementedError` line "
              "with your code, run the cell, then run this check again.")
        return False
    except (CheckFailed, AssertionError) as exc:
        print(f"{title}: not yet. {exc}")
        return False
    except Exception as exc:  # the learner's code crashed: say where, briefly
        print(f"{title}: your code raised {type(exc).__name__}: {exc}")
        return False
    print(f"{title}: PASS")
    return True


def expect_array(name, got, want, tol=1e-8):
    """Inside a check: raise CheckFailed saying how `got` differs from `want`."""
    if got is None:
        raise CheckFailed(f"{name} is None: did your function forget to `return` it?")
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        raise CheckFailed(f"{name} has shape {got.shape}, expected {want.shape}.")
    err = np.abs(got.astype(np.float64) - want)
    if not np.all(err < tol):
        where = np.unravel_index(np.argmax(err), err.shape)
        raise CheckFailed(f"{name} is off by up to {err.max():.3g} (at index {tuple(map(int, where))}: "
                          f"got {got[where]:.6g}, expected {want[where]:.6g}).")


# ---------------------------------------------------------------------------
# 4. Data: the MNIST subset shipped in data/
# ---------------------------------------------------------------------------

DATA_DIR = Path(__file__).resolve().parent / "data"
_MNIST_CACHE = {}


def _verify_mnist_files():
    """Check every raw file against data/SHA256SUMS; raise a clear error otherwise."""
    sums = DATA_DIR / "SHA256SUMS"
    if not sums.exists():
        raise FileNotFoundError(f"{sums} is missing. Restore it with `git checkout -- data/`.")
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        path = DATA_DIR / name
        if not path.exists():
            raise FileNotFoundError(
                f"MNIST file {path} is missing. Restore it with `git checkout -- data/` "
                "or rebuild it with `python tools/make_mnist_subset.py`.")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ValueError(
                f"MNIST file {path} is corrupted (its SHA-256 differs from data/SHA256SUMS). "
                "Restore it with `git checkout -- data/` or rebuild it with "
                "`python tools/make_mnist_subset.py`.")


def load_mnist(train=True):
    """The course's MNIST subset: 8,000 training or 2,000 test digits.

    Read through torchvision.datasets.MNIST(root=data/, download=False), offline.
    Returns (X, y): X float32 (N, 784) in [0, 1], one flattened 28x28 digit a row;
    y int64 (N,), the digit 0..9. Source and licence: data/README.md.
    """
    if train not in _MNIST_CACHE:
        _verify_mnist_files()
        from torchvision.datasets import MNIST
        ds = MNIST(root=str(DATA_DIR), train=train, download=False)
        X = ds.data.numpy().reshape(len(ds), 784).astype(np.float32) / np.float32(255)
        _MNIST_CACHE[train] = (X, ds.targets.numpy().astype(np.int64))
    X, y = _MNIST_CACHE[train]
    return X.copy(), y.copy()


# ---------------------------------------------------------------------------
# 5. Small models and training loops
# ---------------------------------------------------------------------------

def sigmoid(z):
    """Logistic function 1 / (1 + exp(-z)), computed without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.result_type(z, np.float32))


ACTIVATIONS = {
    # name: (f(z), f'(z) written in terms of z and a = f(z))
    "sigmoid": (sigmoid, lambda z, a: a * (1 - a)),
    "relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0).astype(z.dtype)),
    "linear": (lambda z: z, lambda z, a: np.ones_like(z)),
}

# Normalization layers an MLP can use: name -> class taking (num_features).
# Every one has forward, backward, train, eval, gamma, beta, dgamma, dbeta.
NORM_LAYERS = {"batch": BatchNorm}


class Linear:
    """Fully connected layer: out = x @ W + b. x: (N, fan_in) -> out: (N, fan_out).

    With bias=False there is no b (before a BN layer beta plays its role).
    """

    def __init__(self, fan_in, fan_out, rng, scale, bias=True, dtype=np.float32):
        self.W = (rng.standard_normal((fan_in, fan_out)) * scale).astype(dtype)
        self.b = np.zeros(fan_out, dtype=dtype) if bias else None
        self.dW = self.db = None

    def forward(self, x):
        self._x = x
        return x @ self.W if self.b is None else x @ self.W + self.b

    def backward(self, dout):
        self.dW = self._x.T @ dout
        if self.b is not None:
            self.db = dout.sum(axis=0)
        return dout @ self.W.T


class MLP:
    """A multilayer perceptron: [Linear -> (norm) -> activation] per hidden layer, then Linear.

    MLP(sizes=[784, 100, 10], activation="sigmoid", norm=None or "batch", seed=0)
    x: (N, sizes[0]) -> logits (N, sizes[-1]). With a norm layer the Linear before it
    has no bias. Weights ~ N(0, scale^2 / fan_in) with scale 1 (sigmoid, linear) or
    sqrt(2) (relu) unless weight_scale is given. After forward, `pre_norm[l]` holds
    hidden layer l's Linear output z and `pre_activation[l]` the activation's input.
    """

    def __init__(self, sizes, activation="relu", norm=None, seed=0, weight_scale=None,
                 dtype=np.float32, bias=None, momentum=0.1, eps=1e-5):
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
        if norm is not None and norm not in NORM_LAYERS:
            raise ValueError(f"MLP: norm must be None or one of {sorted(NORM_LAYERS)}, got {norm!r}.")
        rng = np.random.default_rng(seed)
        gain = weight_scale if weight_scale is not None else (np.sqrt(2.0) if activation == "relu" else 1.0)
        bias = (norm is None) if bias is None else bias
        self.activation, self.norm = activation, norm
        self.linears, self.norms = [], []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            self.linears.append(Linear(fan_in, fan_out, rng, gain / np.sqrt(fan_in),
                                       bias=True if last else bias, dtype=dtype))
            if norm is not None and not last:
                layer = NORM_LAYERS[norm](fan_out, eps=eps, momentum=momentum)
                layer.gamma, layer.beta = layer.gamma.astype(dtype), layer.beta.astype(dtype)
                self.norms.append(layer)
        self.pre_norm, self.pre_activation = [], []

    def train(self):
        for layer in self.norms:
            layer.train()
        return self

    def eval(self):
        for layer in self.norms:
            layer.eval()
        return self

    def forward(self, x):
        f, _ = ACTIVATIONS[self.activation]
        self.pre_norm, self.pre_activation, self._acts = [], [], []
        h = x
        for i, linear in enumerate(self.linears[:-1]):
            z = linear.forward(h)
            self.pre_norm.append(z)
            if self.norms:
                z = self.norms[i].forward(z)
            self.pre_activation.append(z)
            h = f(z)
            self._acts.append(h)
        return self.linears[-1].forward(h)

    __call__ = forward

    def backward(self, dlogits):
        """Backpropagate dL/dlogits; fills every layer's dW, db, dgamma, dbeta. Returns dL/dx."""
        _, df = ACTIVATIONS[self.activation]
        dh = self.linears[-1].backward(dlogits)
        for i in range(len(self.linears) - 2, -1, -1):
            dz = dh * df(self.pre_activation[i], self._acts[i])
            if self.norms:
                dz = self.norms[i].backward(dz)
            dh = self.linears[i].backward(dz)
        return dh

    def parameters(self):
        """List of (name, array, gradient) for every learned array, in a fixed order."""
        params = []
        for i, lin in enumerate(self.linears):
            params.append((f"W{i}", lin.W, lin.dW))
            if lin.b is not None:
                params.append((f"b{i}", lin.b, lin.db))
        for i, layer in enumerate(self.norms):
            params += [(f"gamma{i}", layer.gamma, layer.dgamma), (f"beta{i}", layer.beta, layer.dbeta)]
        return params


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of softmax(logits) against integer labels y.

    logits: (N, K), y: (N,). Returns (loss, dlogits), dlogits = (softmax - onehot) / N.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -log_probs[np.arange(n), y].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), y] -= 1
    return float(loss), dlogits / n


def sgd_step(model, lr):
    """Plain gradient descent on every parameter, in place: p -= lr * dp."""
    for _, p, g in model.parameters():
        p -= lr * g


def accuracy(model, X, y, batch_size=None):
    """Fraction of X classified as y, in the model's current mode (train or eval).

    batch_size=None sends X as one batch; a number sends it in batches of that size
    (in training mode every batch is normalized with its own statistics).
    """
    batch_size = batch_size or len(X)
    correct = sum(int((model.forward(X[i:i + batch_size]).argmax(axis=1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(X), batch_size))
    return correct / len(X)


def train_model(model, X, y, steps, batch_size=60, lr=0.1, X_test=None, y_test=None,
                eval_every=100, seed=0, progress=True, on_step=None):
    """Train with minibatch SGD on softmax cross-entropy; returns the history.

    Batches are drawn at random (seeded). Every eval_every steps, and at the end,
    test accuracy is measured in eval mode on (X_test, y_test) if given.
    on_step(step, model) is called after each update, e.g. to record activations.
    Returns {"step": [...], "loss": [...] (every step), "eval_step": [...], "test_acc": [...]};
    training stops early, with history["diverged"] = True, if the loss becomes NaN or inf.
    """
    from tqdm.auto import tqdm
    rng = np.random.default_rng(seed)
    history = {"step": [], "loss": [], "eval_step": [], "test_acc": [], "diverged": False}
    for step in tqdm(range(1, steps + 1), disable=not progress, leave=False, desc="training"):
        idx = rng.integers(0, len(X), size=batch_size)
        model.train()
        with np.errstate(all="ignore"):
            loss, dlogits = softmax_cross_entropy(model.forward(X[idx]), y[idx])
            model.backward(dlogits)
            sgd_step(model, lr)
        history["step"].append(step)
        history["loss"].append(loss)
        if not np.isfinite(loss) or not all(np.isfinite(p).all() for _, p, _ in model.parameters()):
            history["diverged"] = True
            break
        if on_step is not None:
            on_step(step, model)
        if X_test is not None and (step % eval_every == 0 or step == steps):
            model.eval()
            history["eval_step"].append(step)
            history["test_acc"].append(accuracy(model, X_test, y_test))
    model.train()
    return history


# ---------------------------------------------------------------------------
# 6. Plots and widgets
# ---------------------------------------------------------------------------

# One colour for "with BN" and one for "without BN", across the whole course.
BN_COLOR = "#1b9e77"
PLAIN_COLOR = "#d95f02"


def interactive_figure(nrows=1, ncols=1, figsize=(6, 4), **kwargs):
    """A figure for a slider to redraw: made without auto-display, ipympl header hidden.

    Show it inside a widget box, e.g. slider_panel([slider], fig, readout).
    Returns (fig, axes) as plt.subplots does.
    """
    import matplotlib.pyplot as plt
    with plt.ioff():
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **kwargs)
    if hasattr(fig.canvas, "header_visible"):      # ipympl's canvas
        fig.canvas.header_visible = False
        fig.canvas.footer_visible = False
        fig.canvas.toolbar_visible = False
        fig.canvas.resizable = False
    return fig, axes


def slider_panel(controls, fig, readout=None):
    """Controls above the live figure, with an optional readout widget beside them.

    The readout gets the CSS class "bn-readout" and the panel "bn-slider-panel",
    so the browser test can find the number a slider changes.
    """
    import ipywidgets as widgets
    top = list(controls)
    if readout is not None:
        readout.add_class("bn-readout")
        top.append(readout)
    panel = widgets.VBox([widgets.HBox(top, layout=widgets.Layout(flex_flow="row wrap")), fig.canvas])
    panel.add_class("bn-slider-panel")
    return panel
