"""bnlib: the small numpy library behind the Batch Normalization course.

Every notebook imports this file; each function is shown and explained once, in the
notebook that introduces it, and reused everywhere else. Read it top to bottom: the BN
math comes first, one line per equation, and the tooling after it.

What importing bnlib does that you cannot see: it limits numpy's BLAS (the library behind
`@` and np.dot) to ONE thread for the whole kernel, so every machine sums in the same order
and prints the same numbers (and the course's small matrices are faster that way). To undo
it in your own notebook: `import threadpoolctl; threadpoolctl.threadpool_limits(None, "blas")`,
or `threadpool_limits(limits=4, user_api="blas")` for four threads. Nothing else changes
global state; nothing is downloaded.

Notation follows Ioffe & Szegedy (2015), "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", arXiv 1502.03167: for one feature, over a
batch of m values x_i,

    mu = mean(x),  xc = x - mu,  var = mean(xc^2),  invstd = 1 / sqrt(var + eps),
    x_hat = xc * invstd,          out = gamma * x_hat + beta.

Arrays are (N, D) (one statistic per feature, i.e. per column) or (N, C, H, W) (one
statistic per channel, over N, H and W).

Sections, each with the rule for what goes in it:

1. The math of batch normalization: forward and backward functions, one line per equation.
2. Layers: objects with forward/backward/train/eval that the models stack.
3. Models and training: a network, its loss, its update, its evaluation (two or more notebooks).
4. Checking tools: relative error, finite differences, compare.
5. Data: the MNIST subset shipped in data/.
6. Helpers of one notebook's experiment: one block per notebook, in course order.
7. Plots and widgets: colours, figures and sliders.
8. Exercise checks: the spoilers, last.

Contents (public name, section, the first notebook that calls it; - for names only
bnlib itself uses):

    name                              sec first used in notebook
    batchnorm_forward                 1   02
    batchnorm_backward                1   03
    batchnorm_backward_steps          1   03
    batchnorm_inference               1   02
    channel_mean_std                  1   05
    groupnorm_forward                 1   07
    groupnorm_backward                1   -
    layernorm_forward                 1   07
    layernorm_backward                1   -
    fold_batchnorm                    1   07
    NotFiniteError                    1   -
    NormLayer                         2   -
    BatchNorm                         2   04
    BatchRenorm                       2   -
    GroupNorm                         2   -
    LayerNorm                         2   -
    NoisyBatchNorm                    2   -
    sigmoid                           2   02
    ACTIVATIONS                       2   -
    NORM_LAYERS                       2   -
    Linear                            2   -
    MLP                               3   01
    softmax_cross_entropy             3   02
    sgd_step                          3   -
    accuracy                          3   02
    train_model                       3   02
    precise_bn_statistics             3   04
    Verdict                           4   -
    rel_error                         4   03
    numerical_gradient                4   03
    compare                           4   01
    DATA_DIR                          5   -
    load_mnist                        5   01
    ink_and_width                     6   01
    logreg_loss                       6   01
    logreg_grad                       6   01
    logreg_hessian                    6   01
    fit_logreg                        6   01
    logreg_condition_number           6   01
    gd_path                           6   01
    gd_sweep                          6   01
    steps_to_settle                   6   01
    last_hidden_layer                 6   01
    r2_linear_fit                     6   02
    sigmoid_linearity                 6   02
    ewma                              6   04
    steps_to_reach                    6   -
    batch_means_with_shift            6   04
    ewma_lag_and_noise                6   04
    effective_values                  6   05
    conv_net                          6   -
    conv_nets_side_by_side            6   05
    train_side_by_side                6   05
    side_by_side_accuracy             6   05
    x_hat_in_random_batches           6   06
    loss_along_gradient               6   -
    gradient_change_along_gradient    6   06
    deep_bn_mlp                       6   08
    linear_grad_norms                 6   08
    train_torch                       6   08
    torch_accuracy                    6   08
    weight_decay_groups               6   08
    small_cnn                         6   08
    batchnorm_eval                    6   08
    freeze_batchnorm2d                6   08
    dropout_bn_mlp                    6   08
    variance_shift                    6   08
    per_device_batchnorm              6   09
    SyncedBatchNormWorkers            6   09
    synced_batchnorm                  6   -
    bn_mlp                            6   09
    convert_ghost_batchnorm           6   09
    batch_gradients                   6   09
    train_accumulated                 6   09
    shift_digits                      6   09
    adapt_batchnorm                   6   09
    accuracy_with_batch_statistics    6   09
    METHOD_COLORS                     7   -
    BN_COLOR                          7   01
    PLAIN_COLOR                       7   01
    DATA_COLORS                       7   01
    method_color                      7   05
    interactive_figure                7   01
    LiveFigure                        7   01
    slider_panel                      7   01
    plot_bn_graph                     7   03
    Check                             8   -
    TOL                               8   -
    FLOAT32_TOL                       8   -
    SEPARATION                        8   -
    STANDARDIZE                       8   -
    check_standardize                 8   01
    LINE_FIT_R2                       8   -
    check_line_fit_r2                 8   02
    BATCHNORM_FORWARD                 8   -
    check_batchnorm_forward           8   03
    BATCHNORM_BACKWARD                8   -
    check_batchnorm_backward          8   03
    SCALE_DIRECTION_SUMS              8   -
    check_scale_direction_sums        8   03
    RUNNING_STATS_UPDATE              8   -
    check_running_stats_update        8   04
    KERAS_RUNNING_VAR                 8   -
    check_keras_running_var           8   04
    RUNNING_AVERAGE_DIGITS            8   -
    check_digits_in_running_average   8   04
    BATCHNORM_NHWC                    8   -
    check_batchnorm_nhwc              8   05
    SPATIAL_BATCHNORM_BACKWARD        8   -
    check_spatial_batchnorm_backward  8   05
    X_HAT_OF_EXAMPLE                  8   -
    check_x_hat_of_example            8   06
    FOLD_LINEAR_BN                    8   -
    check_fold_linear_bn              8   07
    GROUPNORM_ROWS                    8   -
    check_groupnorm_rows              8   07
    DROPOUT_VARIANCE_RATIO            8   -
    check_dropout_variance_ratio      8   08
    COMBINE_MEAN_VAR                  8   -
    check_combine_mean_var            8   09
    GHOST_BATCHNORM                   8   -
    check_ghost_batchnorm             8   09
"""
import contextlib
import hashlib
import sys
import sysconfig
import traceback
import weakref
from collections import namedtuple
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

# One BLAS thread for numpy's matrix products (see the docstring: the same numbers on every
# machine, and faster for the course's small matrices).
threadpool_limits(limits=1, user_api="blas")

# ==============================================================================================
# 1. The math of batch normalization
# Forward and backward passes as numpy functions, one line per equation: BN, inference, other norms, folding.
# ==============================================================================================

def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Batch normalization with batch statistics (training mode), one line per equation.

    x: (N, D), one statistic per feature (column); or (N, C, H, W), one per channel over
    N, H and W, computed on the (N, C, H*W) view. gamma, beta: (D,) or (C,). With m the
    number of values a feature or channel has (N, or N * H * W):
        mu = mean(x), xc = x - mu, var = mean(xc^2) (biased, 1/m),
        std = sqrt(var + eps), invstd = 1 / std, x_hat = xc * invstd, out = gamma * x_hat + beta
    Returns (out, cache): out has x's shape and dtype; cache holds every node of that graph
    (mu, xc, var, std, invstd, x_hat, gamma, eps), for the backward passes.
    """
    x, xv, axes, gamma, beta = _bn_inputs(x, gamma, beta, eps, "batchnorm_forward")
    mu = xv.mean(axis=axes, keepdims=True)
    xc = xv - mu
    var = np.mean(xc**2, axis=axes, keepdims=True)
    std = np.sqrt(var + eps)
    invstd = 1.0 / std
    x_hat = xc * invstd
    out = gamma * x_hat + beta
    cache = {"mu": mu, "xc": xc, "var": var, "std": std, "invstd": invstd, "x_hat": x_hat,
             "gamma": gamma, "eps": eps, "axes": axes, "shape": x.shape}
    return out.reshape(x.shape), cache


def batchnorm_backward(dout, cache):
    """Gradients of batch normalization, the compact form derived in notebook 03.

    dout: the upstream gradient, of out's shape; cache: from batchnorm_forward.
    With sums over the m values of each feature or channel:
        dbeta = sum(dout),  dgamma = sum(dout * x_hat),
        dx = gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma)
    Returns (dx, dgamma, dbeta): dx of x's shape, dgamma and dbeta (D,) or (C,).
    """
    dout, cache = _bn_backward_inputs(dout, cache, "batchnorm_backward")
    x_hat, invstd, gamma, axes = cache["x_hat"], cache["invstd"], cache["gamma"], cache["axes"]
    m = x_hat.size // x_hat.shape[1]
    dbeta = dout.sum(axis=axes, keepdims=True)
    dgamma = np.sum(dout * x_hat, axis=axes, keepdims=True)
    dx = gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma)
    return dx.reshape(cache["shape"]), dgamma.ravel(), dbeta.ravel()


def batchnorm_backward_steps(dout, cache):
    """The same gradients as batchnorm_backward, node by node back through the forward graph.

    Forward (batchnorm_forward): mu = mean(x); xc = x - mu; var = mean(xc^2);
    std = sqrt(var + eps); invstd = 1 / std; x_hat = xc * invstd; out = gamma * x_hat + beta.
    Each line below is one node's local derivative times the gradient arriving at it,
    in reverse order. Returns (dx, dgamma, dbeta).
    """
    dout, cache = _bn_backward_inputs(dout, cache, "batchnorm_backward_steps")
    xc, std, invstd, x_hat = cache["xc"], cache["std"], cache["invstd"], cache["x_hat"]
    gamma, axes = cache["gamma"], cache["axes"]
    m = x_hat.size // x_hat.shape[1]
    dbeta = dout.sum(axis=axes, keepdims=True)                # out = gamma * x_hat + beta
    dgamma = np.sum(dout * x_hat, axis=axes, keepdims=True)
    dx_hat = dout * gamma
    dinvstd = np.sum(dx_hat * xc, axis=axes, keepdims=True)   # x_hat = xc * invstd
    dxc = dx_hat * invstd
    dstd = -dinvstd / std**2                                  # invstd = 1 / std
    dvar = dstd / (2 * std)                                   # std = sqrt(var + eps)
    dxc = dxc + dvar * 2 * xc / m                             # var = mean(xc^2)
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
    if np.any(var < 0):
        raise ValueError(f"{caller}: var has negative entries; a variance is >= 0: pass the "
                         "running variance itself.")
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def channel_mean_std(x):
    """The statistics BN sees: one mean and one (biased, 1/m) std per feature or channel.

    x: (N, D) -> mu, std of shape (D,) (over the N rows), or (N, C, H, W) -> (C,)
    (over N, H and W: m = N * H * W values a channel).
        mu = mean(x),  std = sqrt(mean((x - mu)^2))
    """
    x = _as_float_array(x, "channel_mean_std")
    xv, axes, _ = _channel_view(x, "channel_mean_std")
    if x.size == 0:
        raise ValueError(f"channel_mean_std: x is empty (shape {x.shape}); statistics need at least one value.")
    _check_finite(x, "channel_mean_std")
    mu = xv.mean(axis=axes, keepdims=True)
    std = np.sqrt(np.mean(np.square(xv - mu), axis=axes))
    return mu.ravel(), std.ravel()


def groupnorm_forward(x, gamma, beta, num_groups, eps=1e-5):
    """Group normalization (Wu & He 2018, arXiv 1803.08494): statistics per example.

    x: (N, D) or (N, C, H, W); gamma, beta: (D,) or (C,). The D features (or C channels)
    are split into num_groups consecutive groups; for each example and group, over its
    M = D / G features (or C / G * H * W values):
        mu = mean(x), var = mean((x - mu)^2), invstd = 1 / sqrt(var + eps)
        x_hat = (x - mu) * invstd,  out = gamma * x_hat + beta  (gamma, beta per feature)
    No batch statistic: each example is normalized alone, in training and at inference.
    Returns (out, cache); out has x's shape.
    """
    caller = "groupnorm_forward"
    x = _as_float_array(x, caller)
    _refuse_half(x, caller)
    if x.size == 0:
        raise ValueError(f"{caller}: x is empty (shape {x.shape}); pass at least one example.")
    _channel_view(x, caller)                     # shape check: 2-D or 4-D
    _check_eps(eps, caller)
    channels = x.shape[1]
    if int(num_groups) != num_groups or num_groups < 1 or channels % num_groups:
        raise ValueError(
            f"{caller}: num_groups must be a positive integer that divides the {channels} "
            f"{'features' if x.ndim == 2 else 'channels'} of x {x.shape}; got {num_groups!r}. "
            f"Divisors of {channels}: {[g for g in range(1, channels + 1) if channels % g == 0]}.")
    pshape = (1, channels) if x.ndim == 2 else (1, channels, 1, 1)
    gamma = _param(gamma, "gamma", x, caller).reshape(pshape)
    beta = _param(beta, "beta", x, caller).reshape(pshape)
    xg = x.reshape(len(x), int(num_groups), -1)  # (N, G, M)
    mu = xg.mean(axis=2, keepdims=True)
    _check_finite(mu, caller)
    xc = xg - mu
    var = np.mean(np.square(xc), axis=2, keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = xc * invstd
    out = x_hat.reshape(x.shape) * gamma + beta
    cache = {"x_hat": x_hat, "invstd": invstd, "gamma": gamma, "mu": mu, "var": var,
             "shape": x.shape}
    return out, cache


def groupnorm_backward(dout, cache):
    """Gradients of group normalization. dout: out's shape. Returns (dx, dgamma, dbeta).

    With dx_hat = dout * gamma seen as (N, G, M), sums over each example's group:
        dx = invstd / M * (M * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))
    and, summed over the batch (and H, W): dgamma = sum(dout * x_hat), dbeta = sum(dout).
    """
    x_hat, invstd, gamma, shape = cache["x_hat"], cache["invstd"], cache["gamma"], cache["shape"]
    dout = _as_float_array(dout, "groupnorm_backward", "dout").astype(x_hat.dtype)
    if dout.shape != shape:
        raise ValueError(f"groupnorm_backward: dout must have the forward output's shape "
                         f"{shape}, got {dout.shape}.")
    _check_finite(dout, "groupnorm_backward", "dout")
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    dbeta = dout.sum(axis=axes)
    dgamma = np.sum(dout * x_hat.reshape(shape), axis=axes)
    dx_hat = (dout * gamma).reshape(x_hat.shape)
    m = x_hat.shape[2]
    dx = invstd / m * (m * dx_hat - dx_hat.sum(axis=2, keepdims=True)
                       - x_hat * np.sum(dx_hat * x_hat, axis=2, keepdims=True))
    return dx.reshape(shape), dgamma, dbeta


def layernorm_forward(x, gamma, beta, eps=1e-5):
    """Layer normalization (Ba et al. 2016, arXiv 1607.06450): group norm with one group.

    x: (N, D) -> statistics over each row's D features (torch.nn.LayerNorm(D));
    (N, C, H, W) -> over each example's C * H * W values, gamma and beta per channel
    (Wu & He's LN, torch.nn.GroupNorm(1, C)). gamma, beta: (D,) or (C,).
        x_hat = (x - mean(x)) / sqrt(var(x) + eps) per example,  out = gamma * x_hat + beta
    Returns (out, cache) for layernorm_backward.
    """
    return groupnorm_forward(x, gamma, beta, 1, eps)


def layernorm_backward(dout, cache):
    """Gradients of layer normalization; returns (dx, dgamma, dbeta) (see groupnorm_backward)."""
    return groupnorm_backward(dout, cache)


def fold_batchnorm(W, b, gamma, beta, mean, var, eps=1e-5):
    """Fold an eval-mode BN into the Linear or Conv before it: one affine layer instead of two.

    BN(x @ W + b) = x @ W' + b' (Linear, W: (fan_in, fan_out) as bnlib.Linear stores it),
    and BN(conv(x, W) + b) = conv(x, W') + b' (Conv, W: (C_out, C_in, kh, kw), torch's layout):
        scale = gamma / sqrt(var + eps)           (one value per output feature or channel)
        W' = W * scale  (per output),             b' = (b - mean) * scale + beta
    gamma, beta, mean, var: (fan_out,) or (C_out,); b the same shape, or None for no bias.
    Returns (W', b').
    """
    caller = "fold_batchnorm"
    W = _as_float_array(W, caller, "W")
    if W.ndim not in (2, 4):
        raise ValueError(f"{caller}: W must be 2-D (fan_in, fan_out) for a Linear or 4-D "
                         f"(C_out, C_in, kh, kw) for a Conv, got shape {W.shape}.")
    _check_eps(eps, caller)
    n_out = W.shape[1] if W.ndim == 2 else W.shape[0]
    params = []
    for p, name in ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"), (b, "b")):
        p = np.zeros(n_out, dtype=W.dtype) if p is None else np.asarray(p, dtype=W.dtype)
        if p.shape != (n_out,):
            raise ValueError(f"{caller}: {name} must have shape ({n_out},), one value per output "
                             f"{'feature' if W.ndim == 2 else 'channel'} of W {W.shape}; got {p.shape}. "
                             "A Linear's W is (fan_in, fan_out): transpose torch's (out, in) weight.")
        params.append(p)
    gamma, beta, mean, var, b = params
    for p, name in ((W, "W"), *zip(params, ("gamma", "beta", "mean", "var", "b"))):
        _check_finite(p, caller, name)
    if np.any(var < 0):
        raise ValueError(f"{caller}: var has negative entries; a running variance is >= 0 "
                         "(did you pass the standard deviation's log, or swap mean and var?).")
    scale = gamma / np.sqrt(var + eps)
    W_folded = W * scale if W.ndim == 2 else W * scale.reshape(-1, 1, 1, 1)
    return W_folded, (b - mean) * scale + beta



# Input checks for the math above. They turn a careless input into an error that says what
# was wrong and what to do, before numpy can return a silent wrong number.

def _as_float_array(x, caller, name="x"):
    """x as a floating numpy array (ints and bools become float64)."""
    try:
        x = np.asarray(x)
    except ValueError as exc:                      # ragged nested lists
        raise ValueError(f"{caller}: {name} must be a rectangular array of numbers ({exc}).") from None
    if not np.issubdtype(x.dtype, np.floating):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
            raise TypeError(f"{caller}: {name} must hold real numbers, got dtype {x.dtype}.")
        x = x.astype(np.float64)
    return x


def _refuse_half(x, caller):
    if x.dtype == np.float16:
        raise TypeError(f"{caller}: x is float16. Its squares overflow float16 (largest value 65504) "
                        "once values spread beyond ~256, and var becomes inf. Normalize in float32: "
                        "x.astype(np.float32), as PyTorch's mixed precision keeps BN in float32.")


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


class NotFiniteError(ValueError):
    """A value that must be finite holds NaN or inf (train_model reads it as divergence)."""


def _check_finite(values, caller, name="x"):
    if not np.isfinite(values).all():
        raise NotFiniteError(f"{caller}: {name} contains NaN or inf; check the layer before "
                         "(a diverging learning rate is the usual cause).")


def _param(p, name, x, caller):
    """gamma, beta or a running statistic as a (C,) array of x's dtype, shape checked."""
    channels = x.shape[1]
    p = _as_float_array(p, caller, name).astype(x.dtype)
    if p.shape != (channels,):
        raise ValueError(
            f"{caller}: {name} must have shape ({channels},), one value per "
            f"{'feature' if x.ndim == 2 else 'channel'} of x {x.shape}; got {p.shape}.")
    _check_finite(p, caller, name)
    return p


def _check_eps(eps, caller):
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.number)) or not eps > 0:
        raise ValueError(f"{caller}: eps must be a number > 0 (it keeps 1/sqrt(var + eps) finite "
                         f"for a constant feature); got {eps!r}. PyTorch uses 1e-5.")


def _bn_inputs(x, gamma, beta, eps, caller):
    """Checked inputs of a training-mode BN: (x, view, axes, gamma, beta), the parameters
    shaped to broadcast against the (N, D) or (N, C, H*W) view."""
    x = _as_float_array(x, caller)
    _refuse_half(x, caller)
    view, axes, pshape = _channel_view(x, caller)
    if x.shape[1] == 0 or x.size == 0:
        raise ValueError(f"{caller}: x is empty (shape {x.shape}); a batch needs at least "
                         "2 examples and 1 feature.")
    if x.size // x.shape[1] == 1:
        raise ValueError(
            f"{caller}: Expected more than 1 value per channel when training, got input of "
            f"shape {x.shape}. A batch of one example has variance 0: use eval mode "
            "(running statistics, BatchNorm.eval()) or a batch larger than 1.")
    _check_eps(eps, caller)
    _check_finite(x, caller)
    gamma = _param(gamma, "gamma", x, caller).reshape(pshape)
    beta = _param(beta, "beta", x, caller).reshape(pshape)
    return x, view, axes, gamma, beta


_BN_CACHE_KEYS = {"mu", "xc", "var", "std", "invstd", "x_hat", "gamma", "eps", "axes", "shape"}


def _bn_backward_inputs(dout, cache, caller):
    """dout in the cache's (N, D) or (N, C, H*W) view, and the cache, both checked."""
    if isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[1], dict):
        raise TypeError(f"{caller}: pass the cache alone, not (out, cache): write "
                        "`out, cache = batchnorm_forward(...)`, then backward(dout, cache).")
    if not isinstance(cache, dict) or not _BN_CACHE_KEYS <= cache.keys():
        raise TypeError(f"{caller}: cache must be the dict batchnorm_forward returned as its "
                        f"second value, got {type(cache).__name__}.")
    dout = _as_float_array(dout, caller, "dout").astype(cache["x_hat"].dtype)
    if dout.shape != cache["shape"]:
        raise ValueError(f"{caller}: dout must have the forward output's shape "
                         f"{cache['shape']}, got {dout.shape}.")
    _check_finite(dout, caller, "dout")
    return dout.reshape(cache["x_hat"].shape), cache

# ==============================================================================================
# 2. Layers
# Objects with forward/backward/train/eval that the models stack: norm layers, Linear, activations.
# ==============================================================================================

class NormLayer:
    """What every normalization layer shares: gamma and beta, PyTorch's train() and eval().

    layer.train() or layer.eval() sets layer.training and returns the layer, so
    `layer.eval().forward(x)` reads as in PyTorch. Subclasses set `name` and forward/backward.
    """
    name = "NormLayer"

    def __init__(self, num_features, eps):
        if isinstance(num_features, (bool, np.bool_)) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"{self.name}: num_features must be a positive integer (the number of "
                             f"features or channels of x, its axis 1), got {num_features!r}.")
        _check_eps(eps, self.name)
        self.num_features, self.eps = int(num_features), eps
        self.gamma = np.ones(self.num_features)
        self.beta = np.zeros(self.num_features)
        self.training = True
        self.dgamma = self.dbeta = self._cache = None

    def _check_features(self, x):
        x = _as_float_array(x, self.name)
        if x.ndim in (2, 4) and x.shape[1] != self.num_features:
            raise ValueError(
                f"{self.name}: this layer has {self.num_features} features, but x of shape "
                f"{x.shape} has {x.shape[1]} in axis 1. Build the layer as "
                f"{self.name}({x.shape[1]}) or check the layer that feeds it.")
        return x

    def _cached(self):
        if self._cache is None:
            raise ValueError(f"{self.name}.backward: no forward pass to differentiate. Call forward "
                               "in training mode first (an eval-mode forward, or one that raised, "
                               "keeps nothing for a backward pass).")
        return self._cache

    def train(self):
        """Training mode: BatchNorm uses batch statistics and updates its running ones."""
        self.training = True
        return self

    def eval(self):
        """Eval mode: BatchNorm uses its running statistics and updates nothing."""
        self.training = False
        return self


class BatchNorm(NormLayer):
    """A batch normalization layer with PyTorch's conventions.

    BatchNorm(num_features, eps=1e-5, momentum=0.1) for x of shape (N, D) with
    D = num_features, or (N, C, H, W) with C = num_features.

    Training mode (the default): normalize with the batch mean and the biased
    batch variance, then update the running statistics, momentum weighting
    the NEW value (as torch.nn.BatchNorm1d/2d):
        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)
    where m is the number of values per feature (the unbiased variance is stored).
    momentum=None is PyTorch's cumulative average: momentum = 1 / t at the t-th training
    batch, so the running values are the plain mean of every batch's statistics so far.
    Eval mode: normalize with running_mean and running_var.

    Attributes: gamma, beta (learned, start at 1 and 0), running_mean (starts
    at 0), running_var (starts at 1), num_batches_tracked, training; after backward,
    dgamma, dbeta.
    """
    name = "BatchNorm"

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps)
        if momentum is not None and (isinstance(momentum, (bool, np.bool_)) or
                                     not isinstance(momentum, (int, float, np.number)) or
                                     not 0.0 <= momentum <= 1.0):
            raise ValueError(
                f"{self.name}: momentum must be a number in [0, 1] (PyTorch's convention: the weight "
                f"of the NEW batch statistic, default 0.1) or None (a cumulative average), got "
                f"{momentum!r}. Keras's momentum=0.99 weights the old value: use 1 - 0.99 = 0.01 here.")
        self.momentum = momentum
        self.running_mean = np.zeros(self.num_features)
        self.running_var = np.ones(self.num_features)
        self.num_batches_tracked = 0

    def forward(self, x):
        """Normalize x, (N, num_features) or (N, num_features, H, W); returns out of x's shape."""
        self._cache = None                     # a backward pass belongs to THIS forward only
        x = self._check_features(x)
        if not self.training:
            return batchnorm_inference(x, self.gamma, self.beta, self.running_mean,
                                       self.running_var, self.eps)
        out, cache = batchnorm_forward(x, self.gamma, self.beta, self.eps)
        m = out.size // self.num_features
        mu, var = cache["mu"].ravel(), cache["var"].ravel()
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        self.running_mean = (1 - momentum) * self.running_mean + momentum * mu
        self.running_var = (1 - momentum) * self.running_var + momentum * var * m / (m - 1)
        self._cache = cache
        return out

    __call__ = forward

    def backward(self, dout):
        """Gradient of the last training-mode forward; returns dx, stores dgamma and dbeta."""
        dx, self.dgamma, self.dbeta = batchnorm_backward(dout, self._cached())
        return dx

    def __repr__(self):
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"training={self.training})")


class BatchRenorm(BatchNorm):
    """Batch Renormalization (Ioffe 2017, arXiv 1702.03275): BatchNorm whose training output
    is corrected toward the running statistics, the ones eval mode uses.

    BatchRenorm(num_features, eps=1e-5, momentum=0.1, r_max=3.0, d_max=5.0), for x (N, D) or
    (N, C, H, W), with BatchNorm's interface and running statistics (updated exactly as
    BatchNorm updates them). Training mode, per feature: with the batch's mu_B and
    std_B = sqrt(var_B + eps) (biased var_B, as BN), x_hat = (x - mu_B) / std_B, and the running
    statistics from BEFORE this batch, std = sqrt(running_var + eps),
        r = clip(std_B / std, 1 / r_max, r_max),   d = clip((mu_B - running_mean) / std, -d_max, d_max)
        out = gamma * (x_hat * r + d) + beta
    Where no clip acts, x_hat * r + d = (x - running_mean) / std: what eval mode computes, so
    training and inference normalize alike. r_max = 1, d_max = 0 is plain BN. The backward pass
    treats r and d as constants (the paper's stop_gradient), so the gradient is BN's with gamma
    replaced by gamma * r, and dgamma = sum(dout * (x_hat * r + d)).
    Ioffe keeps r_max = 1, d_max = 0 for the first 5,000 steps and then relaxes them gradually
    to 3 and 5; this layer uses fixed bounds (set layer.r_max, layer.d_max between steps to
    follow a schedule). Attributes: BatchNorm's, r_max, d_max, and after a training forward r
    and d, (num_features,).
    """
    name = "BatchRenorm"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, r_max=3.0, d_max=5.0):
        super().__init__(num_features, eps=eps, momentum=momentum)
        def number(v):
            return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
        if not (number(r_max) and r_max >= 1) or not (number(d_max) and d_max >= 0):
            raise ValueError(f"BatchRenorm: r_max must be a number >= 1 and d_max >= 0 (r is clipped to "
                             f"[1/r_max, r_max], d to [-d_max, d_max]); got {r_max!r} and {d_max!r}. "
                             "r_max=1, d_max=0 is plain BatchNorm.")
        self.r_max, self.d_max = r_max, d_max
        self.r = self.d = None

    def forward(self, x):
        """Renormalize x, (N, num_features) or (N, num_features, H, W); eval mode is BatchNorm's."""
        mean_before, std_before = self.running_mean, np.sqrt(self.running_var + self.eps)
        out = super().forward(x)                       # BN: batch statistics, running ones updated
        if not self.training:
            return out
        cache = self._cache
        mu_b, std_b = cache["mu"].ravel(), cache["std"].ravel()
        r = np.clip(std_b / std_before, 1.0 / self.r_max, self.r_max)
        d = np.clip((mu_b - mean_before) / std_before, -self.d_max, self.d_max)
        self.r, self.d = r.astype(out.dtype), d.astype(out.dtype)
        shape = cache["mu"].shape                      # (1, D) or (1, C, 1): broadcasts on x_hat
        r, d = self.r.reshape(shape), self.d.reshape(shape)
        gamma, beta = cache["gamma"], self.beta.astype(out.dtype).reshape(shape)
        x_renorm = cache["x_hat"] * r + d
        out = gamma * x_renorm + beta
        self._cache = dict(cache, gamma=gamma * r, x_renorm=x_renorm)   # for the backward pass
        return out.reshape(cache["shape"])

    __call__ = forward

    def backward(self, dout):
        """Gradient of the last training-mode forward, r and d held constant; returns dx."""
        cache = self._cached()
        dx, _, self.dbeta = batchnorm_backward(dout, cache)       # cache's gamma is gamma * r
        dout = _as_float_array(dout, "BatchRenorm.backward", "dout").reshape(cache["x_hat"].shape)
        self.dgamma = np.sum(dout * cache["x_renorm"], axis=cache["axes"]).ravel()
        return dx

    def __repr__(self):
        return (f"BatchRenorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"r_max={self.r_max}, d_max={self.d_max}, training={self.training})")


class GroupNorm(NormLayer):
    """A group normalization layer (Wu & He 2018, arXiv 1803.08494), BatchNorm's interface.

    GroupNorm(num_features, num_groups=8, eps=1e-5, momentum=None) for x (N, D) with
    D = num_features, or (N, C, H, W). Each example is normalized over its own groups of
    num_features / num_groups features (see groupnorm_forward), so the output does not
    depend on the batch, and training and eval mode compute the same thing: there are
    no running statistics, and momentum is accepted (bnlib.MLP passes it) and unused.
    Wu & He use 32 groups for conv layers of 64-2048 channels; 8 suits our MLP widths.
    Attributes: gamma, beta (start at 1 and 0), training; after backward, dgamma, dbeta.
    """
    name = "GroupNorm"

    def __init__(self, num_features, num_groups=8, eps=1e-5, momentum=None):
        super().__init__(num_features, eps)
        if isinstance(num_groups, (bool, np.bool_)) or not isinstance(num_groups, (int, np.integer)) \
                or num_groups < 1 or num_features % num_groups:
            raise ValueError(
                f"{self.name}: num_groups={num_groups!r} must be a positive integer that divides "
                f"num_features={num_features}; divisors: "
                f"{[g for g in range(1, self.num_features + 1) if num_features % g == 0]}.")
        self.num_groups, self.momentum = int(num_groups), momentum

    def forward(self, x):
        """Normalize each example of x, (N, num_features) or (N, num_features, H, W)."""
        self._cache = None
        x = self._check_features(x)
        out, self._cache = groupnorm_forward(x, self.gamma, self.beta, self.num_groups, self.eps)
        return out

    __call__ = forward

    def backward(self, dout):
        """Gradient of the last forward; returns dx, stores dgamma and dbeta."""
        dx, self.dgamma, self.dbeta = groupnorm_backward(dout, self._cached())
        return dx

    def __repr__(self):
        return f"{self.name}({self.num_features}, num_groups={self.num_groups}, eps={self.eps})"


class LayerNorm(GroupNorm):
    """A layer normalization layer (Ba et al. 2016, arXiv 1607.06450): GroupNorm with one group.

    LayerNorm(num_features, eps=1e-5, momentum=None): each example is normalized over
    all its num_features features (see layernorm_forward); momentum is unused.
    """
    name = "LayerNorm"

    def __init__(self, num_features, eps=1e-5, momentum=None):
        super().__init__(num_features, num_groups=1, eps=eps, momentum=momentum)

    def __repr__(self):
        return f"LayerNorm({self.num_features}, eps={self.eps})"


class NoisyBatchNorm(BatchNorm):
    """BatchNorm followed by noise whose distribution moves every step ("noisy BN").

    After Santurkar et al. (2018, arXiv 1805.11604, Section 2.1): if BN helped by keeping
    each layer's input distribution still, shaking that distribution on purpose after BN
    should hurt. Each training-mode forward draws, per feature j, a fresh
        shift_j ~ Uniform(-noise_shift, noise_shift),
        gain_j = exp(u_j),  u_j ~ Uniform(-log(noise_gain), log(noise_gain))
    and returns out = gain * BN(x) + shift, so every step sees a new mean and scale.
    (Santurkar et al. add i.i.d. per-example noise whose mean and variance change each step;
    this is the per-feature version of the same idea.) Eval mode is plain BN, no noise.

    NoisyBatchNorm(num_features, eps=1e-5, momentum=0.1, noise_shift=1.0, noise_gain=2.0,
    seed=0). The last draw is kept in .gain and .shift, (num_features,); .rng makes the
    noise (give each layer its own seed). Backward: dout * gain, then BN's backward.
    """

    name = "NoisyBatchNorm"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, noise_shift=1.0, noise_gain=2.0, seed=0):
        super().__init__(num_features, eps=eps, momentum=momentum)
        if not noise_shift >= 0 or not noise_gain >= 1:
            raise ValueError(f"NoisyBatchNorm: noise_shift must be >= 0 and noise_gain >= 1 (gains "
                             f"are drawn in [1/noise_gain, noise_gain]); got {noise_shift} and "
                             f"{noise_gain}. noise_shift=0, noise_gain=1 is plain BN.")
        self.noise_shift, self.noise_gain = noise_shift, noise_gain
        self.rng = np.random.default_rng(seed)
        self.gain = self.shift = None

    def forward(self, x):
        """BN(x), then in training mode gain * BN(x) + shift with a fresh (gain, shift)."""
        out = super().forward(x)
        if not self.training:
            return out
        log_g = np.log(self.noise_gain)
        self.gain = np.exp(self.rng.uniform(-log_g, log_g, self.num_features)).astype(out.dtype)
        self.shift = self.rng.uniform(-self.noise_shift, self.noise_shift, self.num_features).astype(out.dtype)
        pshape = (1, -1) if out.ndim == 2 else (1, -1, 1, 1)
        return out * self.gain.reshape(pshape) + self.shift.reshape(pshape)

    __call__ = forward

    def backward(self, dout):
        """Gradient of the last training-mode forward: BN's backward of dout * gain."""
        cache = self._cached()
        dout = _as_float_array(dout, "NoisyBatchNorm.backward", "dout")
        pshape = (1, -1) if dout.ndim == 2 else (1, -1, 1, 1)
        dx, self.dgamma, self.dbeta = batchnorm_backward(dout * self.gain.reshape(pshape), cache)
        return dx

    def __repr__(self):
        return (f"NoisyBatchNorm({self.num_features}, noise_shift={self.noise_shift}, "
                f"noise_gain={self.noise_gain}, training={self.training})")


def sigmoid(z):
    """Logistic function 1 / (1 + exp(-z)), computed without overflow for large |z|.
    NaN in z is refused (sigmoid(inf) = 1 and sigmoid(-inf) = 0 are fine)."""
    z = _as_float_array(z, "sigmoid", "z")
    if np.isnan(z).any():
        raise ValueError("sigmoid: z contains NaN; check the layer before (a diverging learning "
                         "rate is the usual cause).")
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
NORM_LAYERS = {"batch": BatchNorm, "layer": LayerNorm, "group": GroupNorm,
               "noisy_batch": NoisyBatchNorm, "batch_renorm": BatchRenorm}


class Linear:
    """Fully connected layer: out = x @ W + b. x: (N, fan_in) -> out: (N, fan_out).

    With bias=False there is no b (before a BN layer beta plays its role).
    """

    def __init__(self, fan_in, fan_out, rng, scale, bias=True, dtype=np.float32):
        self.W = (rng.standard_normal((fan_in, fan_out)) * scale).astype(dtype)
        self.b = np.zeros(fan_out, dtype=dtype) if bias else None
        self.dW = self.db = None

    def forward(self, x):
        x = _as_float_array(x, "Linear.forward")
        fan_in = self.W.shape[0]
        if x.ndim != 2 or x.shape[1] != fan_in:
            raise ValueError(f"Linear.forward: x must be (N, {fan_in}), one row of {fan_in} inputs an "
                             f"example; got shape {x.shape}. Flatten images first: x.reshape(len(x), -1).")
        _check_finite(x, "Linear.forward")
        self._x = x
        return x @ self.W if self.b is None else x @ self.W + self.b

    def backward(self, dout):
        self.dW = self._x.T @ dout
        if self.b is not None:
            self.db = dout.sum(axis=0)
        return dout @ self.W.T


# ==============================================================================================
# 3. Models and training
# A network, its loss, its update and its evaluation, used by two or more notebooks.
# ==============================================================================================

class MLP:
    """A multilayer perceptron: [Linear -> (norm) -> activation] per hidden layer, then Linear.

    MLP(sizes=[784, 100, 10], activation="sigmoid", norm=None, seed=0), where norm is
    None or a key of NORM_LAYERS ("batch", "layer", "group", "noisy_batch", "batch_renorm").
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
                if norm == "noisy_batch":              # each layer its own noise stream
                    layer.rng = np.random.default_rng([seed, i])
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

    logits: (N, K), y: (N,) integers in 0..K-1. Returns (loss, dlogits),
    dlogits = (softmax - onehot) / N.
    """
    logits = _as_float_array(logits, "softmax_cross_entropy", "logits")
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"softmax_cross_entropy: logits must be (N, K), one row of class scores "
                         f"an example; got shape {logits.shape}.")
    if len(logits) == 0:
        raise ValueError("softmax_cross_entropy: logits is empty (0 examples); the mean loss of no "
                         "examples is undefined. Pass a batch of at least one.")
    _check_finite(logits, "softmax_cross_entropy", "logits")
    y = _labels(y, len(logits), logits.shape[1], "softmax_cross_entropy")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -log_probs[np.arange(n), y].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), y] -= 1
    return float(loss), dlogits / n


def _labels(y, n, n_classes, caller):
    """y as an int64 (n,) array of class indices 0..n_classes-1, or a clear error."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{caller}: y must be (N,) = ({n},), one label per example; got shape {y.shape}.")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                   and np.all(np.mod(y, 1) == 0))):
        raise TypeError(f"{caller}: y must hold integer class labels, got dtype {y.dtype}.")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{caller}: labels must be in 0..{n_classes - 1} (one per class); got "
                         f"values from {y.min()} to {y.max()}. A label -1 would silently mean "
                         "the last class.")
    return y.astype(np.int64)


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
    progress=True shows a bar in a notebook that ends as one line: "training: 1,000 steps
    in 2.1 s", or "training: diverged at step 9 of 1,000 (loss nan) ..." for a stopped run.
    """
    caller = "train_model"
    X = _as_float_array(X, caller, "X")
    if X.ndim != 2 or np.shape(y) != (len(X),):
        raise ValueError(f"{caller}: X must be (N, features) and y (N,), one label per row of X; got "
                         f"shapes {X.shape} and {np.shape(y)}. Misaligned labels would train on nonsense.")
    if (X_test is None) != (y_test is None) or (X_test is not None and np.shape(y_test) != (len(X_test),)):
        raise ValueError(f"{caller}: give X_test and y_test together, one label per row; got shapes "
                         f"{np.shape(X_test)} and {np.shape(y_test)}.")
    for name, value, low in (("steps", steps, 0), ("batch_size", batch_size, 1), ("eval_every", eval_every, 1)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{caller}: {name} must be a whole number >= {low}, got {value!r}.")
    if not (isinstance(lr, (int, float, np.number)) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"{caller}: lr must be a number > 0, got {lr!r}.")
    n_classes = model.linears[-1].W.shape[1] if hasattr(model, "linears") else np.inf
    y = _labels(y, len(X), n_classes, caller)
    rng = np.random.default_rng(seed)
    history = {"step": [], "loss": [], "eval_step": [], "test_acc": [], "diverged": False}
    bar = _Progress(steps, "training", enabled=progress)
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(X), size=batch_size)
        model.train()
        try:
            with np.errstate(all="ignore"):
                loss, dlogits = softmax_cross_entropy(model.forward(X[idx]), y[idx])
                model.backward(dlogits)
                sgd_step(model, lr)
        except NotFiniteError:                 # activations overflowed: the run diverged
            loss = float("nan")
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
        bar.update(step)
    bar.close(len(history["step"]), diverged=history["diverged"], loss=history["loss"][-1] if steps else None)
    model.train()
    return history



def precise_bn_statistics(model, X):
    """Replace each BN layer's running statistics by its population statistics over X.

    Ioffe & Szegedy's own inference procedure (arXiv 1502.03167, Algorithm 2) computes,
    with the trained network frozen, the mean and unbiased variance of each BN input over
    the training data; Wu & Johnson (2021, arXiv 2105.07576) revisit it as "precise BN".
    This is a one-pass variant: layer by layer, in eval mode, with the BN layers before it
    already on their new statistics (so each BN sees what it will see at inference), over
    X (N, sizes[0]), e.g. the whole training set:
        running_mean = mean(z),  running_var = sum((z - mean)^2) / (N - 1)  (PyTorch's unbiased)
    where z (N, D) is the BN layer's input, model.pre_norm[l] after an eval-mode forward.
    (Algorithm 2 averages the statistics of many mini-batches instead of one pass over X.)
    Changes model in place and leaves it in eval mode; returns model. Layers without
    running statistics (LayerNorm, GroupNorm) are skipped.
    """
    X = _as_float_array(X, "precise_bn_statistics", "X")
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"precise_bn_statistics: X must be (N, features) with N >= 2, got shape "
                         f"{X.shape}; pass many examples, e.g. the whole training set.")
    model.eval()
    for i, layer in enumerate(model.norms):
        if hasattr(layer, "running_mean"):
            model.forward(X)                              # layers before i: new statistics
            z = model.pre_norm[i].astype(np.float64)
            layer.running_mean, layer.running_var = z.mean(axis=0), z.var(axis=0, ddof=1)
    return model

# ==============================================================================================
# 4. Checking tools
# How the course compares one answer with another: relative error, finite differences, compare.
# ==============================================================================================

class Verdict:
    """The result of a check: true or false in code (`assert`, `if`), and silent as the
    last line of a notebook cell, where the printed line already says it."""

    def __init__(self, ok):
        self.ok = bool(ok)

    def __bool__(self):
        return self.ok

    def __repr__(self):
        return f"Verdict({self.ok})"

    def _ipython_display_(self):  # IPython shows nothing for it: no stray "True"
        pass


def rel_error(a, b):
    """Largest elementwise relative error: max |a - b| / max(1e-8, |a| + |b|).

    As in CS231n: below 1e-7 is right in float64; 1e-2 or more is almost surely a bug.
    NaN (or an inf on one side only) gives inf: it is never close to anything.
    """
    a = _as_float_array(a, "rel_error", "a").astype(np.float64)
    b = _as_float_array(b, "rel_error", "b").astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}.")
    if np.isnan(a).any() or np.isnan(b).any() or np.any(np.isinf(a) != np.isinf(b)) \
            or np.any(np.isinf(a) & (a != b)):
        return float("inf")
    if a.size == 0:
        return 0.0
    a, b = np.where(np.isinf(a), 0.0, a), np.where(np.isinf(b), 0.0, b)   # equal infs agree
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def numerical_gradient(f, x, dout, h=1e-5):
    """Centered finite differences of sum(f(x) * dout) with respect to x.

    f: function of an array of x's shape. x: float array, changed in place
    during the loop and restored. Returns an array of x's shape:
        grad[i] = (sum(f(x + h e_i) * dout) - sum(f(x - h e_i) * dout)) / (2h)
    Use float64: in float32 the rounding error swamps the difference (notebook 07 shows it).
    """
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        kind = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"numerical_gradient: x must be a float numpy array (it is shifted by "
                        f"+-h in place, which an integer array would truncate); got {kind}. "
                        "Pass np.asarray(x, dtype=np.float64).")
    if not (isinstance(h, (int, float, np.floating)) and np.isfinite(h) and h > 0):
        raise ValueError(f"numerical_gradient: h must be a small number > 0, e.g. 1e-5; got {h!r}.")
    dout = _as_float_array(dout, "numerical_gradient", "dout")
    _check_finite(x, "numerical_gradient")
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        try:
            x[i] = old + h
            plus = np.sum(f(x) * dout)
            x[i] = old - h
            minus = np.sum(f(x) * dout)
        finally:
            x[i] = old                         # x is given back as it came, even if f raised
        grad[i] = (plus - minus) / (2 * h)
    return grad


def compare(name, ours, reference, tol=1e-10):
    """Print one line a learner reads at a glance: do two arrays agree within tol?

    The line gives a bound (deterministic across machines), not the noisy exact
    difference. Returns a Verdict: true when max |ours - reference| < tol.
    """
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if ours.shape != reference.shape:
        print(f"{name:<34} DIFFERENT shapes {ours.shape} vs {reference.shape}")
        return Verdict(False)
    diff = float(np.max(np.abs(ours - reference))) if ours.size else 0.0
    if diff < tol:
        print(f"{name:<34} agree   (max |diff| < {tol:.0e})")
        return Verdict(True)
    print(f"{name:<34} DIFFER  (max |diff| = {diff:.3g}, tolerance {tol:.0e})")
    return Verdict(False)


# ==============================================================================================
# 5. Data
# The MNIST subset shipped in data/, verified and loaded offline.
# ==============================================================================================

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
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"load_mnist: train must be True (8,000 training digits) or False (2,000 "
                        f"test digits), got {train!r}. Write load_mnist(train=False) for the test set.")
    train = bool(train)
    if train not in _MNIST_CACHE:
        _verify_mnist_files()
        stale = DATA_DIR / "MNIST" / "processed"
        if stale.exists():
            raise RuntimeError(f"{stale} is an old torchvision cache, and torchvision would read it "
                               "instead of the verified raw files beside it. Delete it "
                               f"(rm -r {stale}) and load again.")
        from torchvision.datasets import MNIST
        ds = MNIST(root=str(DATA_DIR), train=train, download=False)
        X = ds.data.numpy().reshape(len(ds), 784).astype(np.float32) / np.float32(255)
        _MNIST_CACHE[train] = (X, ds.targets.numpy().astype(np.int64))
    X, y = _MNIST_CACHE[train]
    return X.copy(), y.copy()


# ==============================================================================================
# 6. Helpers of one notebook's experiment
# One block per notebook, in course order; a helper used by two notebooks moves up to 1-5.
# ==============================================================================================



# --- Notebook 01: input normalization ----------------------------------------------------------

def ink_and_width(X):
    """Two features of flattened 28x28 digits, on very different scales (notebook 01).

    X: (N, 784) pixel values in [0, 1]. Returns (N, 2) float64 with columns
        ink   = sum of the 784 pixel values (0..784; a real digit has about 20-300),
        width = rightmost - leftmost + 1 over the columns holding a pixel > 0.5 (0..28 pixels).
    """
    X = _as_float_array(X, "ink_and_width", "X")
    if X.ndim != 2 or X.shape[1] != 784:
        raise ValueError(f"ink_and_width: X must be (N, 784) flattened 28x28 digits, got shape {X.shape}.")
    _check_finite(X, "ink_and_width", "X")
    cols = (X.reshape(-1, 28, 28) > 0.5).any(axis=1)                  # (N, 28): column has ink
    left = np.argmax(cols, axis=1)
    right = 27 - np.argmax(cols[:, ::-1], axis=1)
    width = np.where(cols.any(axis=1), right - left + 1, 0)
    return np.stack([X.sum(axis=1, dtype=np.float64), width.astype(np.float64)], axis=1)



# Logistic regression on a few features: p = sigmoid(X w + b), y in {0, 1}.

def _logreg_args(w, X, y, caller):
    w, X, y = (_as_float_array(a, caller, name).astype(np.float64) for a, name in ((w, "w"), (X, "X"), (y, "y")))
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"{caller}: X must be (N, D) and y (N,), got {X.shape} and {y.shape}.")
    for a, name in ((w, "w"), (X, "X")):
        _check_finite(a, caller, name)
    if w.shape[-1:] != (X.shape[1],):
        raise ValueError(f"{caller}: w must end in D={X.shape[1]} (one weight per feature), got {w.shape}.")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{caller}: y must hold labels 0 and 1 only; map your two classes to 0/1 first.")
    return w, X, y


def _zero_weights(X, caller):
    """w = 0 for features X, once X is known to be (N, D) numbers."""
    X = _as_float_array(X, caller, "X")
    if X.ndim != 2:
        raise ValueError(f"{caller}: X must be (N, D), one row of D features an example; got shape {X.shape}.")
    return np.zeros(X.shape[1])


def logreg_loss(w, X, y, b=0.0):
    """Mean cross-entropy of logistic regression, L = mean(log(1 + exp(z)) - y z), z = X w + b.

    w: (D,) weights, or a stack (..., D) of weight vectors (e.g. a grid for contours);
    X: (N, D) features; y: (N,) labels in {0, 1}; b: the bias, a number.
    Returns a float for w (D,), an array (...) for a stack.
    """
    w, X, y = _logreg_args(w, X, y, "logreg_loss")
    z = w @ X.T + b                                                   # (..., N)
    return np.mean(np.logaddexp(0.0, z) - y * z, axis=-1)


def logreg_grad(w, X, y, b=0.0):
    """Gradient of logreg_loss with respect to w (D,): X^T (p - y) / N, p = sigmoid(X w + b)."""
    w, X, y = _logreg_args(w, X, y, "logreg_grad")
    p = sigmoid(X @ w + b)
    return X.T @ (p - y) / len(y)


def logreg_hessian(w, X, y, b=0.0):
    """Hessian of logreg_loss with respect to w: (D, D) = X^T diag(p (1 - p)) X / N."""
    w, X, y = _logreg_args(w, X, y, "logreg_hessian")
    p = sigmoid(X @ w + b)
    return (X * (p * (1 - p))[:, None]).T @ X / len(y)


def fit_logreg(X, y, steps=50):
    """The minimum of logreg_loss over weights AND bias, by Newton's method from zero.

    X: (N, D), y: (N,) in {0, 1}. Returns (w (D,), b). Newton's steps do not care how
    badly the features are scaled, which is why it is a good reference here.
    """
    _, X, y = _logreg_args(_zero_weights(X, "fit_logreg"), X, y, "fit_logreg")
    A = np.hstack([X, np.ones((len(X), 1))])                          # bias as a last feature
    theta = np.zeros(A.shape[1])
    for _ in range(steps):
        g = logreg_grad(theta, A, y)
        try:
            theta -= np.linalg.solve(logreg_hessian(theta, A, y), g)
        except np.linalg.LinAlgError:
            raise ValueError("fit_logreg: the Hessian is singular: a feature is constant, or the "
                             "features (with the bias) are linearly dependent.") from None
        if np.max(np.abs(g)) < 1e-12:
            break
    return theta[:-1], float(theta[-1])


def logreg_condition_number(X, y):
    """How stretched logistic regression's cost is at its minimum: kappa = lambda_max / lambda_min
    of the Hessian of logreg_loss over the weights AND the bias, at the (w, b) of fit_logreg.

    X: (N, D) features, y: (N,) labels in {0, 1}. Returns a float (1 for a perfectly round bowl).
    """
    _, X, y = _logreg_args(_zero_weights(X, "logreg_condition_number"), X, y, "logreg_condition_number")
    w, b = fit_logreg(X, y)
    A = np.hstack([X, np.ones((len(X), 1))])                          # bias as a last feature
    lam = np.linalg.eigvalsh(logreg_hessian(np.append(w, b), A, y))
    if not lam[0] > 0:
        raise ValueError("logreg_condition_number: the Hessian is singular (smallest eigenvalue "
                         f"{lam[0]:.3g}): a feature is constant, or the features (with the bias) are "
                         "linearly dependent, or the classes are separable and the minimum is at infinity.")
    return float(lam[-1] / lam[0])


def _gradient_descent(X, y, w0, lrs, steps, b, caller):
    w, X, y = _logreg_args(w0, X, y, caller)
    lrs = _as_float_array(lrs, caller, "lrs").reshape(-1)
    if not (lrs.size and np.all(np.isfinite(lrs)) and np.all(lrs > 0)
            and np.ndim(steps) == 0 and int(steps) == steps >= 0):
        raise ValueError(f"{caller}: need learning rates lr > 0 and a whole number of steps >= 0, "
                         f"got lr={lrs.tolist()}, steps={steps}.")
    steps, n = int(steps), len(y)
    paths = np.empty((len(lrs), steps + 1, w.shape[-1]))
    losses = np.empty((len(lrs), steps + 1))
    paths[:, 0] = w
    Xt = X.T.copy()
    with np.errstate(over="ignore", invalid="ignore"):               # a diverging rate: inf/NaN, said below
        for k in range(steps + 1):
            z = paths[:, k] @ Xt + b                                  # (R, N): every rate's logits
            e = np.exp(-np.abs(z))
            losses[:, k] = np.mean(np.maximum(z, 0) + np.log1p(e) - y * z, axis=1)   # = logreg_loss
            if k < steps:
                p = np.where(z >= 0, 1.0, e) / (1.0 + e)              # sigmoid(z), without overflow
                paths[:, k + 1] = paths[:, k] - lrs[:, None] * ((p - y) @ X) / n
    if not np.all(np.isfinite(losses)):
        bad = lrs[~np.all(np.isfinite(losses), axis=1)]
        raise NotFiniteError(f"{caller}: gradient descent diverged to inf/NaN at lr {bad.tolist()}; "
                             "try smaller learning rates.")
    return paths, losses


def gd_path(X, y, w0, lr, steps, b=0.0):
    """Plain gradient descent on logreg_loss over w, with the bias b held fixed.

    w_{k+1} = w_k - lr * logreg_grad(w_k). X: (N, D), y: (N,), w0: (D,).
    Returns (path (steps + 1, D) with path[0] = w0, losses (steps + 1,)).
    """
    if np.ndim(lr) != 0:
        raise ValueError(f"gd_path: lr must be one number, got shape {np.shape(lr)}; "
                         "for several learning rates at once use gd_sweep.")
    paths, losses = _gradient_descent(X, y, w0, [lr], steps, b, "gd_path")
    return paths[0], losses[0]


def gd_sweep(X, y, lrs, steps, b=0.0):
    """gd_path from w = 0 at several learning rates at once (one run per rate, bias b held fixed).

    X: (N, D), y: (N,) in {0, 1}, lrs: R learning rates > 0.
    Returns (paths (R, steps + 1, D), losses (R, steps + 1)): row r is gd_path at lrs[r].
    """
    return _gradient_descent(X, y, _zero_weights(X, "gd_sweep"), lrs, steps, b, "gd_sweep")


def steps_to_settle(losses, threshold):
    """The first step k from which the loss stays at or below threshold to the end of the run
    (every one of losses[k:]), or None when the run ends above it.

    Unlike the first step below the threshold, this does not count a run that touches the
    threshold once and bounces out again (a learning rate too large to settle).
    """
    losses = _as_float_array(losses, "steps_to_settle", "losses")
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"steps_to_settle: losses must be a 1-D array of one loss per step, got "
                         f"shape {losses.shape}.")
    above = np.flatnonzero(~(losses <= threshold))                    # NaN counts as above
    if above.size and above[-1] == losses.size - 1:
        return None
    return int(above[-1] + 1) if above.size else 0


def last_hidden_layer(model, X):
    """The activations the last Linear layer of an MLP takes as its inputs, for inputs X.

    model: a bnlib.MLP with at least one hidden layer; X: (N, sizes[0]). Runs model.forward(X)
    (in the model's current mode) and returns (N, sizes[-2]): a^[L-1] = f(pre_activation[-1]).
    """
    if not isinstance(model, MLP) or len(model.linears) < 2:
        raise TypeError(f"last_hidden_layer: model must be a bnlib.MLP with a hidden layer, got {model!r}.")
    model.forward(X)
    f, _ = ACTIVATIONS[model.activation]
    return f(model.pre_activation[-1])


# --- Notebook 02: the sigmoid's linear region --------------------------------------------------

def r2_linear_fit(x, y, x_test=None, y_test=None):
    """How much of y a straight line (an affine map) of x explains: R^2 of a least-squares fit.

    x: (N,) or (N, K) inputs, y: (N,) or (N, D) targets. Fits y ~ x @ A + b by least
    squares on (x, y), then scores it on (x_test, y_test) if given (held-out), else on (x, y):
        R^2 = 1 - sum((y - x @ A - b)^2) / sum((y - mean(y))^2)   (sums over rows and outputs)
    1 means y is exactly affine in x; 0 means the fit is no better than predicting mean(y).
    Returns a float.
    """
    caller = "r2_linear_fit"
    x, y = (_as_float_array(a, caller, n).astype(np.float64) for a, n in ((x, "x"), (y, "y")))
    x_test = x if x_test is None else _as_float_array(x_test, caller, "x_test").astype(np.float64)
    y_test = y if y_test is None else _as_float_array(y_test, caller, "y_test").astype(np.float64)
    design = []
    for a, b, names in ((x, y, "x and y"), (x_test, y_test, "x_test and y_test")):
        if a.ndim not in (1, 2) or b.ndim not in (1, 2) or len(a) != len(b):
            raise ValueError(f"{caller}: {names} must be 1-D or 2-D with the same number of rows "
                             f"(one example a row); got shapes {a.shape} and {b.shape}.")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError(f"{caller}: {names} contain NaN or inf; remove or fix those rows.")
        design.append(np.column_stack([a.reshape(len(a), -1), np.ones(len(a))]))
    if design[0].shape[1] != design[1].shape[1]:
        raise ValueError(f"{caller}: x has {design[0].shape[1] - 1} columns but x_test has "
                         f"{design[1].shape[1] - 1}; they must hold the same features.")
    y2, yt2 = y.reshape(len(y), -1), y_test.reshape(len(y_test), -1)
    if y2.shape[1] != yt2.shape[1]:
        raise ValueError(f"{caller}: y has {y2.shape[1]} outputs but y_test has {yt2.shape[1]}.")
    ss_tot = np.sum(np.square(yt2 - yt2.mean(axis=0)))
    if ss_tot == 0:
        raise ValueError(f"{caller}: the scored targets are constant, so R^2 (a share of their "
                         "variance) is undefined; score on targets that vary.")
    coef, *_ = np.linalg.lstsq(design[0], y2, rcond=None)
    return float(1.0 - np.sum(np.square(yt2 - design[1] @ coef)) / ss_tot)


def sigmoid_linearity(z):
    """How straight the sigmoid is over the points z: two numbers.

    z: (N,) points, or (N, D) with one set of points a column (e.g. one neuron's batch).
        r2  = R^2 of the least-squares line through (z_i, sigmoid(z_i))
            = corr(z, sigmoid(z))^2          (1 = the points lie on a straight line)
        gap = max_i |sigmoid(z_i) - (1/2 + z_i / 4)|
              (largest distance to the tangent at 0; 0 = the sigmoid acts like z/4 + 1/2)
    Returns (r2, gap): floats for 1-D z, arrays of shape (D,) for 2-D z.
    """
    caller = "sigmoid_linearity"
    z = _as_float_array(z, caller, "z").astype(np.float64)
    if z.ndim not in (1, 2) or len(z) < 2:
        raise ValueError(f"{caller}: z must be 1-D (N,) or 2-D (N, D) with N >= 2 points; "
                         f"got shape {z.shape}.")
    if not np.isfinite(z).all():
        raise ValueError(f"{caller}: z contains NaN or inf; check the values you pass.")
    s = sigmoid(z)
    zc, sc = z - z.mean(axis=0), s - s.mean(axis=0)
    ss_z, ss_s = np.sum(zc * zc, axis=0), np.sum(sc * sc, axis=0)
    if np.any(ss_z == 0) or np.any(ss_s == 0):
        raise ValueError(f"{caller}: all points of a set are equal (or the sigmoid is flat at 1 "
                         "or 0 over them), so no line fit is defined; use points that differ "
                         "(gamma > 0).")
    r2 = np.sum(zc * sc, axis=0) ** 2 / (ss_z * ss_s)
    gap = np.max(np.abs(s - (0.5 + z / 4)), axis=0)
    return (float(r2), float(gap)) if z.ndim == 1 else (r2, gap)


# --- Notebook 04: training vs inference, the running averages ----------------------------------

def ewma(values, momentum, start=0.0):
    """The running average BatchNorm keeps, after each of T steps (PyTorch's convention).

    values: (T,) or (T, D), the batch statistic at steps 1..T; start: the initial running
    value, a scalar or (D,) (BatchNorm starts running_mean at 0 and running_var at 1).
        r_0 = start,   r_t = (1 - momentum) * r_{t-1} + momentum * values[t - 1]
    momentum weights the NEW value (Keras's momentum k is 1 - momentum here). For a
    constant value mu and start 0: r_k = (1 - (1 - momentum)^k) * mu.
    Returns r_1..r_T, float64 of values' shape.
    """
    values = _as_float_array(values, "ewma", "values").astype(np.float64)
    if values.ndim not in (1, 2):
        raise ValueError(f"ewma: values must be (T,) or (T, D), one row a step; got shape {values.shape}.")
    _check_finite(values, "ewma", "values")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ewma: momentum must be in [0, 1] (the weight of the NEW value, PyTorch's "
                         f"convention), got {momentum}. For Keras's momentum k pass 1 - k.")
    out = np.empty_like(values)
    r = np.broadcast_to(np.asarray(start, dtype=np.float64), values.shape[1:]).copy()
    for t, v in enumerate(values):
        r = (1 - momentum) * r + momentum * v
        out[t] = r
    return out


def steps_to_reach(track, start, before, after, fraction=0.9):
    """How many steps after a shift a running average needs to cover `fraction` of it.

    track: (T,) running values (e.g. from ewma); the data shifted at index `start` from
    level `before` to level `after`. Returns the smallest k >= 0 with
        (track[start + k] - before) / (after - before) >= fraction,
    or None if the track never gets there. k counts the step of the shift itself as 0.
    """
    track = np.asarray(track, dtype=np.float64)
    if track.ndim != 1 or not 0 <= start < len(track):
        raise ValueError(f"steps_to_reach: track must be 1-D and start an index into it; got "
                         f"shape {track.shape} and start={start}.")
    if after == before:
        raise ValueError("steps_to_reach: before and after are equal: there is no shift to cover.")
    covered = (track[start:] - before) / (after - before)
    hits = np.flatnonzero(covered >= fraction)
    return int(hits[0]) if hits.size else None


def batch_means_with_shift(before, after, steps, shift_at, batch_size, seed=0):
    """A stream of batch means through one shift in the data, and the true mean at each step.

    before, after: (N,) one value per example before and after the data changes (the same
    examples, e.g. a feature of each digit and of the same digit transformed). At step t a
    batch of batch_size random indices i (with replacement, generator seed `seed`) gives
        batch_means[t] = mean(before[i]) if t < shift_at else mean(after[i])
        true_means[t]  = mean(before)    if t < shift_at else mean(after)
    Returns (batch_means, true_means), each (steps,) float64; their difference is the
    noise of one batch mean.
    """
    before, after = (np.asarray(a, dtype=np.float64) for a in (before, after))
    if before.ndim != 1 or before.shape != after.shape or len(before) == 0:
        raise ValueError(f"batch_means_with_shift: before and after must be (N,) with the same N, one "
                         f"value per example; got shapes {before.shape} and {after.shape}.")
    if not 0 < shift_at < steps or batch_size < 1:
        raise ValueError(f"batch_means_with_shift: need 0 < shift_at < steps and batch_size >= 1; got "
                         f"shift_at={shift_at}, steps={steps}, batch_size={batch_size}.")
    idx = np.random.default_rng(seed).integers(0, len(before), size=(steps, batch_size))
    shifted = np.arange(steps) >= shift_at
    batch_means = np.where(shifted[:, None], after[idx], before[idx]).mean(axis=1)
    true_means = np.where(shifted, after.mean(), before.mean())
    return batch_means, true_means


def ewma_lag_and_noise(batch_means, true_means, momentum, shift_at, fraction=0.9, settle=50):
    """The two things a BN momentum trades, on a stream with one shift (batch_means_with_shift).

    batch_means, true_means: (T,); the true mean jumps at index shift_at. The EWMA is
    linear, so r = ewma(batch_means) = ewma(true_means) + ewma(noise), noise = batch_means - true_means:
        lag   = steps_to_reach(r, shift_at, true_means[shift_at - 1], true_means[shift_at], fraction)
        noise = std(ewma(noise, momentum)[settle:])   (the first steps skipped: it starts at 0)
    Returns (lag, noise): lag an int (the step of the shift counts as 0) or None, noise a float.
    """
    batch_means, true_means = (np.asarray(a, dtype=np.float64) for a in (batch_means, true_means))
    if batch_means.ndim != 1 or batch_means.shape != true_means.shape:
        raise ValueError(f"ewma_lag_and_noise: batch_means and true_means must be (T,) with the same T; "
                         f"got shapes {batch_means.shape} and {true_means.shape}.")
    if not 0 < shift_at < len(true_means) or not 0 <= settle < len(true_means):
        raise ValueError(f"ewma_lag_and_noise: shift_at must be in 1..T-1 and settle in 0..T-1 (T = "
                         f"{len(true_means)}); got shift_at={shift_at}, settle={settle}.")
    track = ewma(batch_means, momentum)
    lag = steps_to_reach(track, shift_at, true_means[shift_at - 1], true_means[shift_at], fraction)
    noise = ewma(batch_means - true_means, momentum)[settle:].std()
    return lag, float(noise)


# --- Notebook 05: batch normalization for convolutions -----------------------------------------
# How many independent values a channel's statistic is worth; the small conv net of the
# batch-of-one experiment, in torch (imported inside, as in notebook 08's block), and K copies of
# it trained side by side in one loop, so that 5 seeds x 4 learning rates cost about one run.

def effective_values(maps, batch_size, n_batches=4000, seed=0):
    """How many independent values one batch's variance of each channel is worth.

    maps (N, C, H, W): the feature maps of N images. Draws n_batches batches of batch_size
    images (with replacement, numpy's default_rng(seed)) and takes, per batch and channel,
    the biased variance v over its m = batch_size * H * W values, as BN does. Were those m
    values independent draws from the channel's distribution, v would vary from batch to
    batch with variance (mu4 - sigma^4) / m (to first order in 1/m), mu4 and sigma^2 being
    the channel's fourth central moment and variance over all N * H * W values. So
        m_eff = (mu4 - sigma^4) / Var(v)
    is the number of independent values that would make v as noisy as it is: m when the
    values are independent, about batch_size when all values of an image are equal.
    Returns (C,) float64.
    """
    caller = "effective_values"
    maps = _as_float_array(maps, caller, "maps").astype(np.float64)
    if maps.ndim != 4 or len(maps) < 2 or maps.shape[2] * maps.shape[3] < 1:
        raise ValueError(f"{caller}: maps must be (N, C, H, W) feature maps of N >= 2 images; got shape "
                         f"{maps.shape}.")
    _check_finite(maps, caller, "maps")
    if int(batch_size) != batch_size or batch_size < 1 or int(n_batches) != n_batches or n_batches < 2:
        raise ValueError(f"{caller}: batch_size must be an integer >= 1 and n_batches an integer >= 2; got "
                         f"{batch_size!r} and {n_batches!r}.")
    centred = maps - maps.mean(axis=(0, 2, 3), keepdims=True)
    sigma2 = np.mean(centred ** 2, axis=(0, 2, 3))
    mu4 = np.mean(centred ** 4, axis=(0, 2, 3))
    if np.any(sigma2 == 0):
        raise ValueError(f"{caller}: a channel is constant (variance 0 over all {len(maps)} images): its "
                         "batch variance never varies, so it has no number of values to count.")
    mean_img, square_img = centred.mean(axis=(2, 3)), np.mean(centred ** 2, axis=(2, 3))   # (N, C)
    rows = np.random.default_rng(seed).integers(0, len(maps), size=(int(n_batches), int(batch_size)))
    v = square_img[rows].mean(axis=1) - mean_img[rows].mean(axis=1) ** 2    # (n_batches, C): batch variances
    return (mu4 - sigma2 ** 2) / v.var(axis=0)


def conv_net(batchnorm=True, width=8, seed=0):
    """The small conv net of notebook 05, as a torch.nn.Sequential (float32).

    Rows (N, 784) are reshaped to (N, 1, 28, 28) inside, then
        Conv2d(1, width, 5x5, stride 2) -> BatchNorm2d(width) -> ReLU -> Flatten -> Linear(width * 144, 10):
    each digit gives `width` maps of 12x12 ((28 - 5) // 2 + 1 = 12). batchnorm=False leaves BN
    out and gives the conv a bias instead (with BN, beta does that job). Weights: PyTorch's
    default init, drawn after torch.manual_seed(seed).
    """
    import torch
    from torch import nn
    if int(width) != width or width < 1:
        raise ValueError(f"conv_net: width (the number of conv filters) must be an integer >= 1, got {width!r}.")
    torch.manual_seed(int(seed))
    width = int(width)
    norm = [nn.BatchNorm2d(width)] if batchnorm else []
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, width, 5, stride=2, bias=not batchnorm),
                         *norm, nn.ReLU(), nn.Flatten(), nn.Linear(width * 144, 10))


def conv_nets_side_by_side(seeds, batchnorm=True, per_image=False, width=8):
    """K = len(seeds) independent copies of conv_net, one per seed, computed together.

    Copy k starts as conv_net(batchnorm, width, seeds[k]) and stays independent of the
    others (its own weights, BN statistics and batches): the copies share only the loop, so
    that train_side_by_side trains all K in about the time of one. forward(x): x (K, B, 784)
    gives copy k the batch x[k], x (B, 784) gives every copy the same digits; it returns the
    logits, (K, B, 10). The conv is one matrix product over the 5x5 patches of each digit
    (torch.nn.functional.unfold), the same numbers as Conv2d.
    per_image=False: BN in training mode normalizes each channel over the B digits and 12x12
    positions of the batch, as BatchNorm2d. per_image=True: each digit's maps are normalized
    with that digit's own per-channel mean and variance (what BatchNorm2d does to a batch of
    one image; here B of them at once, as data-parallel training with one image per device),
    and the running statistics take the average over the B digits of their means and unbiased
    variances (as torch's InstanceNorm2d with track_running_stats=True). Eval mode normalizes
    with the running statistics.
    """
    import torch
    seeds = _seed_list(seeds, "conv_nets_side_by_side")
    nets = [conv_net(batchnorm, width, seed) for seed in seeds]
    with torch.no_grad():
        return _side_by_side_class()(nets, seeds, bool(per_image))


def _seed_list(seeds, caller):
    """seeds as a non-empty list of ints >= 0, or a clear error."""
    seeds = np.atleast_1d(_as_float_array(seeds, caller, "seeds"))
    if seeds.ndim != 1 or seeds.size == 0 or not np.all(np.isfinite(seeds)) \
            or np.any(seeds != np.round(seeds)) or np.any(seeds < 0):
        raise ValueError(f"{caller}: seeds must be a non-empty list of whole numbers >= 0, one per copy "
                         f"(e.g. [0, 1, 2]); got {seeds!r}.")
    return [int(s) for s in seeds]


def _side_by_side_class():
    """The module of conv_nets_side_by_side; made once, when torch is first needed."""
    global _SideBySide
    if _SideBySide is None:
        import torch
        import torch.nn.functional as F

        class ConvNetsSideBySide(torch.nn.Module):
            def __init__(self, nets, seeds, per_image):
                super().__init__()
                conv, head = nets[0][1], nets[0][-1]
                self.seeds, self.width, self.per_image = tuple(seeds), conv.out_channels, per_image
                self.test_per_image = False          # side_by_side_accuracy(per_image=True) sets it
                stack = lambda ts: torch.nn.Parameter(torch.stack([t.detach().clone() for t in ts]))
                self.conv_weight = stack([n[1].weight.reshape(self.width, 25) for n in nets])  # (K, w, 25)
                self.conv_bias = stack([n[1].bias for n in nets]) if conv.bias is not None else None
                self.bn = None
                if isinstance(nets[0][2], torch.nn.BatchNorm2d):   # copy k: channels k*w .. k*w + w-1
                    self.bn = torch.nn.BatchNorm2d(len(nets) * self.width)
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(self.bn, name).copy_(torch.cat([getattr(n[2], name) for n in nets]))
                self.head_weight = stack([n[-1].weight.T for n in nets])                       # (K, w*144, 10)
                self.head_bias = stack([n[-1].bias for n in nets])                             # (K, 10)

            def forward(self, x):
                K, w, B = len(self.seeds), self.width, x.shape[-2]
                patches = F.unfold(x.reshape(-1, 1, 28, 28), 5, stride=2)         # (digits, 25, 144)
                if x.ndim == 3:                                                   # copy k's own digits
                    patches = patches.reshape(K, B, 25, 144).transpose(1, 2).reshape(K, 25, B * 144)
                    z = torch.bmm(self.conv_weight, patches)
                else:                                                             # the same digits for all
                    z = torch.matmul(self.conv_weight, patches.transpose(0, 1).reshape(25, B * 144))
                if self.conv_bias is not None:                                    # z: (K, w, B * 144)
                    z = z + self.conv_bias[:, :, None]
                if self.bn is not None:
                    z = self._normalize(z, K * w, B)
                h = torch.relu(z).reshape(K, w, B, 144).transpose(1, 2).reshape(K, B, w * 144)
                return torch.baddbmm(self.head_bias[:, None, :], h, self.head_weight)

            def _normalize(self, z, channels, B):
                bn = self.bn
                if (self.per_image and self.training) or (self.test_per_image and not self.training):
                    rows = z.reshape(1, channels * B, 144)       # row c * B + b: channel c of digit b
                    if self.training:                            # running statistics: as torch's
                        with torch.no_grad():                    # instance_norm, the average over digits
                            var, mu = torch.var_mean(rows.reshape(channels, B, 144), dim=2, correction=1)
                            bn.running_mean.mul_(1 - bn.momentum).add_(bn.momentum * mu.mean(dim=1))
                            bn.running_var.mul_(1 - bn.momentum).add_(bn.momentum * var.mean(dim=1))
                    out = F.batch_norm(rows, None, None, bn.weight.repeat_interleave(B),   # each row over
                                       bn.bias.repeat_interleave(B), True, 0.0, bn.eps)    # its own 144 values
                    return out.reshape(z.shape)
                out = F.batch_norm(z.reshape(1, channels, B * 144), bn.running_mean, bn.running_var,
                                   bn.weight, bn.bias, self.training, bn.momentum, bn.eps)
                return out.reshape(z.shape)

        _SideBySide = ConvNetsSideBySide
    return _SideBySide


_SideBySide = None


def train_side_by_side(nets, X, y, rates, batch_size, examples):
    """Plain SGD for every copy of conv_nets_side_by_side, each at its own learning rate.

    Copy k draws `steps = examples // batch_size` batches of batch_size digits from (X, y),
    with replacement, by numpy's default_rng(nets.seeds[k]) (copies with the same seed see
    the same digits), and updates every parameter p -= rates[k] * dL_k/dp, L_k its own mean
    cross-entropy over its batch: the same as torch.optim.SGD(lr=rates[k]) on
    conv_net(seed=nets.seeds[k]) alone (tests/test_6_nb05_conv_batchnorm.py checks it).
    X (N, 784) rows, y (N,) labels 0-9, rates (K,). Returns the (steps, K) training losses
    (a copy whose rate diverges gets NaN losses; the others go on).
    """
    import torch
    import torch.nn.functional as F
    caller = "train_side_by_side"
    X, y = _digits_and_labels(X, y, caller)
    K = len(nets.seeds)
    rates = _as_float_array(rates, caller, "rates")
    if rates.shape != (K,) or not np.all(np.isfinite(rates)) or np.any(rates <= 0):
        raise ValueError(f"{caller}: rates must be ({K},), one positive learning rate per copy; got "
                         f"{rates!r}.")
    if int(batch_size) != batch_size or batch_size < 1 or int(examples) != examples or examples < batch_size:
        raise ValueError(f"{caller}: batch_size must be an integer >= 1 and examples an integer >= "
                         f"batch_size; got {batch_size!r} and {examples!r}.")
    steps, B = int(examples) // int(batch_size), int(batch_size)
    draws = np.stack([np.random.default_rng(s).integers(0, len(X), size=(steps, B)) for s in nets.seeds], 1)
    Xt, yt, draws = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(draws)   # draws (steps, K, B)
    params = list(nets.parameters())
    rate_rows = [torch.from_numpy(rates.astype(np.float32)).repeat_interleave(p.shape[0] // K)
                 .reshape(-1, *[1] * (p.ndim - 1)) for p in params]               # copy k owns rows k*r..
    losses = np.empty((steps, K))
    nets.train()
    for step, idx in enumerate(draws):
        loss = F.cross_entropy(nets(Xt[idx]).reshape(K * B, 10), yt[idx].reshape(-1),
                               reduction="none").reshape(K, B).mean(dim=1)
        for p in params:
            p.grad = None
        loss.sum().backward()                     # copy k's parameters get dL_k/dp only
        with torch.no_grad():
            for p, rate in zip(params, rate_rows):
                p.addcmul_(rate, p.grad, value=-1.0)          # p -= rate * grad
        losses[step] = loss.detach().numpy()
    return losses


def side_by_side_accuracy(nets, X, y, per_image=False):
    """Test accuracy of every copy of conv_nets_side_by_side, in eval mode: (K,) float64.

    per_image=False: BN normalizes with its running statistics (eval mode). per_image=True:
    each digit's maps are normalized with that digit's own per-channel mean and variance,
    which is what training mode computes for a batch of one digit. X (N, 784), y (N,).
    The copies' train/eval mode is restored afterwards.
    """
    import torch
    X, y = _digits_and_labels(X, y, "side_by_side_accuracy")
    correct, was_training = np.zeros(len(nets.seeds)), nets.training
    nets.eval()
    nets.test_per_image = bool(per_image)
    try:
        with torch.no_grad():
            for start in range(0, len(X), 500):
                logits = nets(torch.from_numpy(X[start:start + 500]))
                correct += (logits.argmax(dim=2).numpy() == y[None, start:start + 500]).sum(axis=1)
    finally:
        nets.test_per_image = False
        nets.train(was_training)
    return correct / len(X)


def _digits_and_labels(X, y, caller):
    """X as float32 (N, 784) finite rows and y as int64 (N,) labels 0-9, or a clear error."""
    X = _as_float_array(X, caller, "X")
    if X.ndim != 2 or X.shape[1] != 784 or len(X) == 0:
        raise ValueError(f"{caller}: X must be (N, 784), one flattened 28x28 digit a row, N >= 1; "
                         f"got shape {X.shape}.")
    _check_finite(X, caller, "X")
    return np.ascontiguousarray(X, dtype=np.float32), _labels(y, len(X), 10, caller)


# --- Notebook 06: why BN works, the evidence ---------------------------------------------------

def x_hat_in_random_batches(x, index, batch_size, n_batches, eps=1e-5, seed=0):
    """One example's normalized value when its batchmates are drawn at random.

    x: (N,) one feature's values over a dataset; index: the example we follow. Each of
    n_batches batches holds x[index] and batch_size - 1 batchmates drawn at random from the
    other N - 1 values (with replacement, as train_model draws its batches). Over each batch
    of m = batch_size values, with mu and var its mean and biased variance:
        x_hat = (x[index] - mu) / sqrt(var + eps)
    Returns (n_batches,) float64: the example's x_hat in each batch. Its spread is the noise
    BN's batch statistics add to that example. For m = 2, x_hat = +-d / sqrt(d^2 + eps) with
    d = (x[index] - mate) / 2: +-1 up to eps.
    """
    caller = "x_hat_in_random_batches"
    x = _as_float_array(x, caller).astype(np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"{caller}: x must be 1-D (N,) with N >= 2, one feature over a dataset; "
                         f"got shape {x.shape}. Pick a column, e.g. z[:, k].")
    if int(index) != index or not 0 <= index < len(x):
        raise ValueError(f"{caller}: index must be an integer in [0, {len(x)}), got {index!r}.")
    if int(batch_size) != batch_size or batch_size < 2 or int(n_batches) != n_batches or n_batches < 1:
        raise ValueError(f"{caller}: batch_size must be an integer >= 2 (a batch of one has no "
                         f"spread) and n_batches >= 1; got {batch_size!r} and {n_batches!r}.")
    _check_eps(eps, caller)
    _check_finite(x, caller)
    rng = np.random.default_rng(seed)
    others = np.delete(x, int(index))
    mates = others[rng.integers(0, len(others), size=(int(n_batches), int(batch_size) - 1))]
    batch = np.concatenate([np.full((int(n_batches), 1), x[int(index)]), mates], axis=1)
    mu = batch.mean(axis=1)
    var = np.mean(np.square(batch - mu[:, None]), axis=1)
    return (x[int(index)] - mu) / np.sqrt(var + eps)


def loss_along_gradient(model, X, y, step_sizes):
    """The loss after one gradient step of each size: a slice through the loss landscape.

    Santurkar et al. (2018, arXiv 1805.11604, Section 3.1) measure, at points along
    training, how much the loss varies as one moves along the gradient. With theta all of
    model's parameters and g = dL/dtheta on the batch X (N, D), y (N,), in training mode:
        losses[i] = L(theta - step_sizes[i] * g)   (same batch, training mode)
    step_sizes: (S,). Returns (S,) float64. The model is left as it was (parameters and
    running statistics restored; only the stored gradients are overwritten). The range of
    these losses scales with the loss and the gradient's size; gradient_change_along_gradient
    gives a measure that does not.
    """
    return _probe_along_gradient(model, X, y, step_sizes, "loss_along_gradient")[0]


def gradient_change_along_gradient(model, X, y, step_sizes):
    """How much the gradient changes over one gradient step, relative to its own size.

    Santurkar et al.'s "gradient predictiveness" (arXiv 1805.11604, Figure 4(b)) is
    ||g(theta) - g(theta - eta g)|| along the gradient g; here divided by ||g(theta)||, so
    neither the loss level nor the gradient's size decides it. With the same batch
    X (N, D), y (N,), in training mode:
        change[i] = ||g(theta - step_sizes[i] g) - g(theta)|| / ||g(theta)||
    0 means the gradient is a perfect guide that far ahead; 1 means it changed by its own
    size. change[i] / step_sizes[i] = ||dg|| / ||dtheta|| is the curvature along g, Santurkar
    et al.'s "effective beta-smoothness" measured along the step. step_sizes: (S,).
    Returns (S,) float64; the model is left as it was.
    """
    return _probe_along_gradient(model, X, y, step_sizes, "gradient_change_along_gradient")[1]


def _probe_along_gradient(model, X, y, step_sizes, caller):
    # (losses, relative gradient changes) after steps of each size along the gradient
    step_sizes = np.asarray(step_sizes, dtype=np.float64)
    if step_sizes.ndim != 1 or not np.isfinite(step_sizes).all():
        raise ValueError(f"{caller}: step_sizes must be a 1-D array of finite numbers, "
                         f"got shape {step_sizes.shape}; e.g. lr * np.array([0.5, 1, 2, 4]).")
    params = [p.copy() for _, p, _ in model.parameters()]
    stats = [(layer.running_mean.copy(), layer.running_var.copy()) for layer in model.norms
             if hasattr(layer, "running_mean")]
    was_training = all(layer.training for layer in model.norms)
    model.train()
    _, dlogits = softmax_cross_entropy(model.forward(X), y)
    model.backward(dlogits)
    grads = [g.astype(np.float64) for _, _, g in model.parameters()]
    g_norm = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    losses, change = np.empty(len(step_sizes)), np.empty(len(step_sizes))
    with np.errstate(all="ignore"):
        for i, eta in enumerate(step_sizes):
            for (_, p, _), p0, g in zip(model.parameters(), params, grads):
                p[...] = p0 - eta * g
            losses[i], dlogits = softmax_cross_entropy(model.forward(X), y)
            model.backward(dlogits)
            diff = sum(np.sum((g1.astype(np.float64) - g) ** 2)
                       for (_, _, g1), g in zip(model.parameters(), grads))
            change[i] = np.sqrt(diff) / g_norm
    for (_, p, _), p0 in zip(model.parameters(), params):
        p[...] = p0
    for layer, (mean, var) in zip([l for l in model.norms if hasattr(l, "running_mean")], stats):
        layer.running_mean, layer.running_var = mean, var
    if not was_training:
        model.eval()
    return losses, change


# --- Notebook 08: batch normalization in modern networks ---------------------------------------
# These helpers build and train torch.nn models (notebook 08 is where learners meet BN in
# PyTorch); torch is imported inside them, so importing bnlib stays fast.

def deep_bn_mlp(depth, width, residual=False, zero_init_last_gamma=False, seed=0):
    """A deep ReLU network with BN, as a torch.nn.Sequential (float32).

    Input Linear(784, width, no bias) -> BN -> ReLU, then `depth` hidden Linear layers of
    width x width, then Linear(width, 10). Plain (residual=False): each hidden layer is
    Linear (no bias) -> BatchNorm1d -> ReLU, as in notebook 06. Residual: the hidden layers
    come in depth // 2 blocks of two with an identity skip (He et al. 2016, arXiv 1512.03385;
    no ReLU after the sum, as in He et al.'s identity-mapping variant, arXiv 1603.05027),
        out = x + BN2(W2 relu(BN1(W1 x))),
    and zero_init_last_gamma sets each block's BN2 gamma to 0 (Goyal et al. 2017, arXiv
    1706.02677, Section 5.1), so every block starts as the identity, out = x.
    Weights: PyTorch's default init, drawn after torch.manual_seed(seed).
    """
    import torch
    from torch import nn
    if int(depth) != depth or depth < 2 or (residual and depth % 2):
        raise ValueError(f"deep_bn_mlp: depth must be an integer >= 2 (even when residual=True, "
                         f"two layers a block); got {depth!r}.")
    if zero_init_last_gamma and not residual:
        raise ValueError("deep_bn_mlp: zero_init_last_gamma needs residual=True: a plain network "
                         "whose gamma is 0 outputs a constant.")
    torch.manual_seed(seed)

    def layer(last_relu=True):
        parts = [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width)]
        return parts + [nn.ReLU()] * last_relu

    stem = [nn.Linear(784, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    if not residual:
        hidden = [m for _ in range(int(depth)) for m in layer()]
    else:
        hidden = []
        for _ in range(int(depth) // 2):
            branch = nn.Sequential(*layer(), *layer(last_relu=False))
            if zero_init_last_gamma:
                nn.init.zeros_(branch[-1].weight)
            hidden.append(_residual_class()(branch))
    return nn.Sequential(*stem, *hidden, nn.Linear(width, 10))


def _residual_class():
    """The residual block module, x + branch(x); made once, when torch is first needed."""
    global _Residual
    if _Residual is None:
        import torch

        class Residual(torch.nn.Module):
            def __init__(self, branch):
                super().__init__()
                self.branch = branch

            def forward(self, x):
                return x + self.branch(x)
        _Residual = Residual
    return _Residual


_Residual = None


def linear_grad_norms(model, X, y):
    """Squared norm ||dL/dW||^2 of every nn.Linear's weight, input to output, on one batch.

    X (N, 784) float32, y (N,): one forward and backward pass in training mode (batch
    statistics), softmax cross-entropy. Returns (L,) float64. The model's gradients are
    overwritten; its running statistics take one update, as any training-mode pass does.
    """
    import torch
    model.train()
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(X)), torch.as_tensor(y))
    loss.backward()
    return np.array([m.weight.grad.double().pow(2).sum().item() for m in model.modules()
                     if isinstance(m, torch.nn.Linear)])


def train_torch(model, optimizer, X, y, steps, batch_size, seed=0, on_step=None, bn_eval=False):
    """Minibatch training of a torch model with softmax cross-entropy, batches drawn with
    replacement from (X, y) by numpy's default_rng(seed) (as bnlib.train_model does).

    optimizer: a torch.optim optimizer over (some of) model's parameters. model.train() is
    called first, which puts EVERY module in training mode, BN included; bn_eval=True then
    puts the BN modules back in eval mode (bnlib.batchnorm_eval). on_step(step, model), if given, is called after every update
    (step = 1..steps). Returns the (steps,) float64 training losses; a NaN loss stops
    training early and is the last entry.
    """
    import torch
    if int(steps) != steps or steps < 1 or int(batch_size) != batch_size or batch_size < 2:
        raise ValueError(f"train_torch: steps must be an integer >= 1 and batch_size >= 2 (BN "
                         f"needs two values to have a variance); got {steps!r}, {batch_size!r}.")
    _labels(y, len(X), 10, "train_torch")
    rng = np.random.default_rng(seed)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    losses = []
    model.train()
    if bn_eval:
        batchnorm_eval(model)
    for step in range(1, int(steps) + 1):
        idx = torch.from_numpy(rng.integers(0, len(X), size=int(batch_size)))
        loss = torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):
            break
        if on_step is not None:
            on_step(step, model)
    return np.array(losses)


def torch_accuracy(model, X, y):
    """Fraction of the rows of X that model classifies as y, in eval mode (running statistics);
    the model's train/eval mode is restored afterwards, module by module."""
    import torch
    with _eval_mode(model), torch.no_grad():
        pred = model(torch.as_tensor(X)).argmax(dim=1).numpy()
    return float(np.mean(pred == np.asarray(y)))


@contextlib.contextmanager
def _eval_mode(model):
    """model in eval mode inside the block; each module's own mode given back afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


def weight_decay_groups(model, weight_decay):
    """torch.optim parameter groups: weight decay on the weight matrices and conv filters only.

    Parameters with one dimension (BN's gamma and beta, every bias) go in a group with
    weight_decay=0, as many training recipes do (e.g. Goyal et al. 2017, Section 5.1, on
    weight decay of gamma and beta). Returns [{"params": [...], "weight_decay": weight_decay},
    {"params": [...], "weight_decay": 0.0}], to pass to torch.optim.SGD(groups, lr=...).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": float(weight_decay)},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def small_cnn(n_classes=5, seed=0):
    """A small CNN for 28x28 digits: (backbone, head), both torch.nn.Sequential.

    backbone: Conv(1->8, 3x3, no bias) -> BN2d -> ReLU -> MaxPool 2, Conv(8->16) -> BN2d ->
    ReLU -> MaxPool 2, flatten to 16 * 5 * 5 = 400 features; head: Linear(400, n_classes).
    Input (N, 784) rows are reshaped to (N, 1, 28, 28) inside. Weights drawn after
    torch.manual_seed(seed).
    """
    import torch
    from torch import nn
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                             nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten())
    return backbone, nn.Linear(400, n_classes)


def batchnorm_eval(model):
    """Put every BatchNorm module of model back in eval mode (after model.train()): it then
    normalizes with, and no longer updates, its running statistics. Returns model."""
    import torch
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def freeze_batchnorm2d(model):
    """Replace every nn.BatchNorm2d of an nn.Sequential by torchvision's FrozenBatchNorm2d with
    the same gamma, beta, running statistics and eps: fixed buffers, no parameters, the
    eval-mode formula in any mode. Returns model (changed in place)."""
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d
    for i, m in enumerate(model):
        if isinstance(m, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(m.num_features, eps=m.eps)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, name).copy_(getattr(m, name).detach())
            model[i] = frozen
    return model


def dropout_bn_mlp(order, p=0.5, width=128, seed=0):
    """784 -> width -> width -> 10 ReLU network with one Dropout(p) and BN, as torch.nn.Sequential.

    order="dropout_before_bn": Linear -> BN -> ReLU -> Dropout -> Linear -> BN -> ReLU -> Linear:
        the second BN sees dropped-out inputs (Li et al. 2019, arXiv 1801.05134, variance shift).
    order="dropout_after_bn":  Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Dropout -> Linear:
        dropout after the last BN, Li et al.'s recommendation.
    Weights drawn after torch.manual_seed(seed) in the same order for both, so the two share
    their initial weights.
    """
    import torch
    from torch import nn
    orders = ("dropout_before_bn", "dropout_after_bn")
    if order not in orders:
        raise ValueError(f"dropout_bn_mlp: order must be one of {orders}, got {order!r}.")
    torch.manual_seed(seed)
    l1, l2, l3 = nn.Linear(784, width, bias=False), nn.Linear(width, width, bias=False), nn.Linear(width, 10)
    first = [l1, nn.BatchNorm1d(width), nn.ReLU()]
    second = [l2, nn.BatchNorm1d(width), nn.ReLU()]
    if order == "dropout_before_bn":
        return nn.Sequential(*first, nn.Dropout(p), *second, l3)
    return nn.Sequential(*first, *second, nn.Dropout(p), l3)


def variance_shift(model, X):
    """Li et al.'s variance shift at the model's LAST BatchNorm1d: per feature,
        shift = running_var / Var_eval(input),
    running_var being what training left there (the variance BN will divide by at test time)
    and Var_eval the variance the same input really has on X in eval mode (dropout off).
    shift > 1: at test time BN divides by too large a variance. Returns (D,) float64.
    """
    import torch
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if not bns:
        raise ValueError("variance_shift: the model has no BatchNorm1d.")
    seen = {}
    hook = bns[-1].register_forward_hook(lambda m, inp, out: seen.update(x=inp[0].detach()))
    try:
        with _eval_mode(model), torch.no_grad():
            model(torch.as_tensor(X))
    finally:
        hook.remove()
    return bns[-1].running_var.double().numpy() / seen["x"].double().var(dim=0).numpy()


# --- Notebook 09: batch statistics across devices and datasets ---------------------------------
# Data parallelism splits every batch into world_size contiguous shards, one a device. Without
# synchronization each device normalizes its own shard (per_device_batchnorm); with it, real
# worker processes all-reduce their statistics over torch.distributed, gloo on 127.0.0.1
# (SyncedBatchNormWorkers, synced_batchnorm). Then the torch tools of the experiments: ghost
# batches, gradient accumulation, and re-estimating BN's statistics on shifted data (AdaBN).

def _shard_bounds(n, world_size):
    """[(start, stop)] of world_size contiguous shards of n examples, as equal as possible: the
    first n % world_size shards hold one example more (np.array_split's sizes)."""
    sizes = [len(part) for part in np.array_split(np.arange(n), world_size)]
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops)]


def _check_world_size(world_size, n, caller, name="world_size", what="devices (worker processes)"):
    """world_size as an int in 1..n (n=None: no upper bound), or a clear error."""
    if isinstance(world_size, (bool, np.bool_)) or not isinstance(world_size, (int, np.integer)):
        raise TypeError(f"{caller}: {name} must be a whole number of {what}, "
                        f"got {world_size!r} ({type(world_size).__name__}).")
    if world_size < 1 or (n is not None and world_size > n):
        bound = f" and at most the batch's {n} examples (each needs one)" if n is not None else ""
        raise ValueError(f"{caller}: {name} must be at least 1{bound}; got {world_size}.")
    return int(world_size)


def _sharded_bn_inputs(x, gamma, beta, dout, eps, caller):
    """Checked (x, gamma, beta, dout) for the sharded BN functions: x (N, D) or (N, C, H, W) of
    a float dtype, gamma and beta (C,), dout of x's shape; all finite."""
    x, _, _, gamma, beta = _bn_inputs(x, gamma, beta, eps, caller)
    dout = _as_float_array(dout, caller, "dout").astype(x.dtype)
    if dout.shape != x.shape:
        raise ValueError(f"{caller}: dout must have x's shape {x.shape} (the gradient arriving at "
                         f"BN's output), got {dout.shape}.")
    _check_finite(dout, caller, "dout")
    return x, gamma.ravel(), beta.ravel(), dout


def per_device_batchnorm(x, gamma, beta, dout, world_size, eps=1e-5):
    """BN as data parallelism WITHOUT synchronization computes it: each device its own shard.

    x (N, D) or (N, C, H, W) is split along N into world_size contiguous shards (as equal as
    possible, np.array_split's sizes); each shard is normalized with its OWN mean and variance
    (bnlib.batchnorm_forward on the shard), and dout's shard goes back through that shard's
    graph (bnlib.batchnorm_backward). gamma and beta are shared, so their gradients add up
    over the devices (the all-reduce of the parameter gradients):
        dgamma = sum_k dgamma_k,  dbeta = sum_k dbeta_k
    This is also ghost batch normalization (Hoffer et al. 2017, arXiv 1705.08741) with ghost
    batches of N / world_size, and what gradient accumulation over world_size micro-batches
    computes. world_size=1 is plain BN. Returns (out, dx, dgamma, dbeta): out and dx in x's
    shape and order, dgamma and dbeta (C,).
    """
    caller = "per_device_batchnorm"
    x, gamma, beta, dout = _sharded_bn_inputs(x, gamma, beta, dout, eps, caller)
    world_size = _check_world_size(world_size, len(x), caller)
    values_per_example = x.size // (x.shape[0] * x.shape[1])
    smallest = len(x) // world_size
    if smallest * values_per_example < 2:
        raise ValueError(f"{caller}: with {len(x)} examples on {world_size} devices a shard holds "
                         f"{smallest} example(s), 1 value per channel: its variance is 0. Use at most "
                         f"{len(x) // 2} devices, or synced_batchnorm (global statistics).")
    outs, dxs, dgamma, dbeta = [], [], 0.0, 0.0
    for start, stop in _shard_bounds(len(x), world_size):
        out_k, cache = batchnorm_forward(x[start:stop], gamma, beta, eps)
        dx_k, dgamma_k, dbeta_k = batchnorm_backward(dout[start:stop], cache)
        outs.append(out_k)
        dxs.append(dx_k)
        dgamma, dbeta = dgamma + dgamma_k, dbeta + dbeta_k
    return np.concatenate(outs), np.concatenate(dxs), dgamma, dbeta


def _synced_bn_shard(dist, torch, x, gamma, beta, dout, eps):
    """What one worker computes for its shard x: synchronized BN, two all-reduces.

    Forward: the per-channel (count, sum, sum of squares) of every shard, added up over the
    workers, give the global statistics (m values a channel in all):
        mu = sum(x) / m,  var = sum(x^2) / m - mu^2,  x_hat = (x - mu) / sqrt(var + eps)
    Backward: the two sums the compact backward needs, added up the same way:
        dbeta = sum(dout),  dgamma = sum(dout * x_hat),
        dx = gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma)
    The sums are taken in float64 whatever x's dtype. (sum(x^2) / m - mu^2 loses digits when
    |mu| >> std; torch's SyncBatchNorm gathers each shard's mean and variance instead.)
    """
    def all_reduce(values):                        # every worker gets the sum over all workers
        t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.numpy()

    xv, axes, pshape = _channel_view(x.astype(np.float64), "synced_batchnorm")
    c = x.shape[1]
    count = np.full(1, xv.size // c, dtype=np.float64)
    stats = all_reduce(np.concatenate([count, xv.sum(axis=axes), np.square(xv).sum(axis=axes)]))
    m, mu = stats[0], stats[1:c + 1] / stats[0]
    var = np.maximum(stats[c + 1:] / m - mu ** 2, 0.0)
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (xv - mu.reshape(pshape)) * invstd.reshape(pshape)
    g, b = gamma.astype(np.float64).reshape(pshape), beta.astype(np.float64).reshape(pshape)
    out = g * x_hat + b
    dv = dout.astype(np.float64).reshape(xv.shape)
    sums = all_reduce(np.concatenate([dv.sum(axis=axes), np.sum(dv * x_hat, axis=axes)]))
    dbeta, dgamma = sums[:c], sums[c:]
    dx = g * invstd.reshape(pshape) / m * (m * dv - dbeta.reshape(pshape) - x_hat * dgamma.reshape(pshape))
    return tuple(a.astype(x.dtype) for a in (out.reshape(x.shape), dx.reshape(x.shape), dgamma, dbeta))


def _torch_syncbn_shard(dist, torch, x):
    """torch.nn.SyncBatchNorm on a worker's CPU shard, inside a real process group: its error."""
    bn = torch.nn.SyncBatchNorm(x.shape[1]).double().train()
    try:
        bn(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "torch.nn.SyncBatchNorm ran on CPU tensors"


def _fault(dist, torch, kind):
    """For the tests: a worker that fails ("raise") or never answers ("hang")."""
    if kind == "hang":
        import time
        time.sleep(3600)
    raise RuntimeError("a fault injected by the test")


_WORKER_TASKS = {"batchnorm": _synced_bn_shard, "torch_syncbn": _torch_syncbn_shard, "fault": _fault}


def _loopback_interface():
    """The loopback network interface's name ("lo" on Linux, "lo0" on macOS), or None."""
    import socket
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((name for name in names if name.startswith("lo")), None)


def _synced_batchnorm_worker(rank, world_size, port, inbox, outbox, timeout):
    """One worker process: join the gloo group on 127.0.0.1:port, then run the tasks that arrive
    in inbox until None arrives, answering each in outbox as (kind, rank, result). Module-level,
    so that the new process can import it by name (spawn and forkserver pickle it so)."""
    import datetime
    import os
    dist = None
    try:
        import torch
        import torch.distributed as dist
        torch.set_num_threads(1)
        loopback = _loopback_interface()
        if loopback:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)   # gloo talks over 127.0.0.1 only
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
        outbox.put(("ready", rank, None))
        while (task := inbox.get()) is not None:
            kind, args = task
            outbox.put(("done", rank, _WORKER_TASKS[kind](dist, torch, *args)))
    except BaseException:
        outbox.put(("failed", rank, traceback.format_exc()))
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def _free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_workers(processes, inboxes, grace=5.0):
    """Ask every live worker to leave (None in its inbox), wait up to grace seconds, then
    terminate and finally kill whatever is still running. Safe to call twice."""
    for p, inbox in zip(processes, inboxes):
        if p.is_alive():
            with contextlib.suppress(Exception):
                inbox.put(None)
    for p in processes:
        p.join(grace)
    for p in processes:
        if p.is_alive():
            p.terminate()
            p.join(grace)
        if p.is_alive():
            p.kill()
            p.join()
    for q in inboxes:                  # nobody reads them any more: drop what is still unsent
        q.cancel_join_thread()
        q.close()


class SyncedBatchNormWorkers:
    """world_size real worker processes that compute synchronized BN together, started once.

        with bnlib.SyncedBatchNormWorkers(4) as workers:       # 4 processes, one gloo group
            out, dx, dgamma, dbeta = workers(x, gamma, beta, dout)
            ...                                                 # as many calls as you like

    Each worker is a real process started by torch.multiprocessing, and joins a
    torch.distributed process group with the gloo backend, over TCP on 127.0.0.1, on a free
    port. A call splits x along N into world_size contiguous shards (as equal as possible),
    sends shard k to worker k, and each worker runs the synchronized BN of _synced_bn_shard:
    one all-reduce of the (count, sum, sum of squares) per channel forward, one of
    (sum(dout), sum(dout * x_hat)) backward. The results come back in x's order: (out, dx,
    dgamma, dbeta), equal to BN on the whole batch (bnlib.batchnorm_forward/backward).

    start_method: "spawn" starts each worker as a fresh Python that imports bnlib and torch
    (a second or more a worker, every time). "forkserver" (the default where it exists, i.e.
    not on Windows) imports them ONCE, in a server process that multiprocessing starts at
    the first use and keeps until this Python exits (a helper, like its resource tracker: it
    holds no process group), and forks every worker from that clean, single-threaded server.
    (The list of modules the server imports is multiprocessing's, global: this sets it.)
    Both import the worker function by name, bnlib._synced_batchnorm_worker, which is why it
    lives here and not in a notebook (a notebook's functions cannot be imported by name).

    The constructor returns as soon as the processes are started; the first call waits until
    all have joined the group. A worker that fails or dies, or no answer within `timeout`
    seconds (for the start, then for each call), raises RuntimeError naming the worker, and
    stops every worker: the group is then closed. close() (or leaving the `with` block, or
    the object being garbage-collected) stops them all; no worker outlives it.

    Each worker imports the parent's main module again (as `__mp_main__`): in a script, put
    the code that starts workers under `if __name__ == "__main__":`; a program read from
    stdin (`python - < file.py`) cannot be imported again at all, so it is refused.
    Attributes: world_size, timeout, start_method, processes (multiprocessing.Process), port.
    """

    def __init__(self, world_size, timeout=120.0, start_method=None):
        caller = "SyncedBatchNormWorkers"
        self.world_size = _check_world_size(world_size, None, caller)
        main = sys.modules.get("__main__")
        if getattr(main, "__file__", None) == "<stdin>":
            raise RuntimeError(f"{caller}: this Python reads its program from stdin (python - < "
                               "file), and each worker starts by importing the main program "
                               "again, which stdin cannot give twice. Save it in a file and run "
                               "`python file.py`, with the code that starts workers under "
                               "`if __name__ == \"__main__\":`, or run it in a notebook.")
        import torch.multiprocessing as mp
        methods = [m for m in ("forkserver", "spawn") if m in mp.get_all_start_methods()]
        start_method = methods[0] if start_method is None else start_method
        if start_method not in methods:
            raise ValueError(f"{caller}: start_method must be one of {methods} (or None for "
                             f"{methods[0]!r}), got {start_method!r}.")
        if isinstance(timeout, (bool, np.bool_)) or not isinstance(timeout, (int, float, np.number)) \
                or not timeout > 0:
            raise ValueError(f"{caller}: timeout must be a number of seconds > 0, got {timeout!r}.")
        ctx = mp.get_context(start_method)
        if start_method == "forkserver":          # the server imports these once, for every worker
            ctx.set_forkserver_preload(["bnlib", "torch", "torch.distributed"])
        self.timeout, self.port, self.start_method = float(timeout), _free_port(), start_method
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(self.world_size)]
        self.processes = [ctx.Process(target=_synced_batchnorm_worker, daemon=True,
                                      name=f"bnlib synced BN worker {rank}",
                                      args=(rank, self.world_size, self.port, self._inboxes[rank],
                                            self._outbox, self.timeout))
                          for rank in range(self.world_size)]
        self._closed, self._ready = False, False
        self._stop = weakref.finalize(self, _stop_workers, self.processes, self._inboxes)
        try:
            for p in self.processes:
                p.start()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self, grace=5.0):
        """Stop every worker: each leaves the process group and exits; any still running after
        grace seconds is terminated (killed if need be)."""
        self._closed = True
        if self._stop.alive:
            self._stop.detach()
            _stop_workers(self.processes, self._inboxes, grace)
        with contextlib.suppress(Exception):
            self._outbox.close()

    def __repr__(self):
        state = "closed" if self._closed else ("running" if self._ready else "starting")
        return (f"SyncedBatchNormWorkers(world_size={self.world_size}, {self.start_method}, "
                f"port={self.port}, {state})")

    def _died(self, rank, kind, then=""):
        p = self.processes[rank]
        how = f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
        return RuntimeError(f"SyncedBatchNormWorkers: worker {rank} of {self.world_size} (pid {p.pid}) "
                            f"died ({how}) while the others waited for its {kind}{then}. Every worker "
                            "is stopped. (A script must start workers under "
                            "`if __name__ == \"__main__\":`.)")

    def _collect(self, kind):
        """One answer from every worker, in rank order; a failure closes the group and raises."""
        import queue
        import time
        deadline, answers, failed = time.monotonic() + self.timeout, {}, {}

        def crashed():                  # died without saying why (killed, or crashed in C code)
            return [r for r, p in enumerate(self.processes) if p.exitcode not in (None, 0) and r not in failed]

        try:
            while len(answers) < self.world_size:
                try:
                    what, rank, result = self._outbox.get(timeout=0.05)
                except queue.Empty:
                    gone = [r for r, p in enumerate(self.processes)
                            if r not in answers and p.exitcode is not None]
                    if gone and self._outbox.empty():
                        raise self._died(gone[0], kind) from None
                    if time.monotonic() > deadline:
                        late = [r for r in range(self.world_size) if r not in answers]
                        raise RuntimeError(
                            f"SyncedBatchNormWorkers: no {kind} from worker(s) {late} of "
                            f"{self.world_size} within timeout={self.timeout:g} s; every worker is "
                            "stopped. On a busy machine starting the workers can take long: "
                            "pass a larger timeout.") from None
                    continue
                if what != "failed":
                    answers[rank] = result
                    continue
                failed[rank] = result
                last = result.strip().splitlines()[-1]
                for _ in range(20):             # a peer that crashed is the cause: name it instead
                    if crashed():
                        raise self._died(crashed()[0], kind, then=f" (worker {rank} then failed: {last})")
                    time.sleep(0.05)
                raise RuntimeError(f"SyncedBatchNormWorkers: worker {rank} of {self.world_size} "
                                   f"failed: {last}. Every worker is stopped. Its traceback:\n{result}")
        except BaseException:
            self.close(grace=0.5)              # the others may be stuck in a collective
            raise
        return [answers[rank] for rank in range(self.world_size)]

    def _run(self, kind, per_rank_args):
        if self._closed:
            raise RuntimeError("SyncedBatchNormWorkers: these workers are stopped (closed, or one "
                               "failed); start new ones: bnlib.SyncedBatchNormWorkers(world_size).")
        if not self._ready:
            self._collect("start (joining the gloo process group)")
            self._ready = True
        for inbox, args in zip(self._inboxes, per_rank_args):
            inbox.put((kind, args))
        return self._collect(f"answer to {kind!r}")

    def __call__(self, x, gamma, beta, dout, eps=1e-5):
        """Synchronized BN of x over the workers: (out, dx, dgamma, dbeta), see the class doc."""
        caller = "SyncedBatchNormWorkers"
        x, gamma, beta, dout = _sharded_bn_inputs(x, gamma, beta, dout, eps, caller)
        if self.world_size > len(x):
            raise ValueError(f"{caller}: {self.world_size} workers need at least {self.world_size} "
                             f"examples, one a worker; x has {len(x)}.")
        bounds = _shard_bounds(len(x), self.world_size)
        answers = self._run("batchnorm", [(x[a:b], gamma, beta, dout[a:b], eps) for a, b in bounds])
        out = np.concatenate([a[0] for a in answers])
        dx = np.concatenate([a[1] for a in answers])
        return out, dx, answers[0][2], answers[0][3]

    def torch_syncbatchnorm_message(self, x):
        """What torch.nn.SyncBatchNorm says, inside this real process group, when each worker
        gives it its CPU shard of x in training mode (it needs GPU tensors). Returns worker 0's
        message as a string."""
        caller = "torch_syncbatchnorm_message"
        x = _as_float_array(x, caller)
        _channel_view(x, caller)
        if len(x) < self.world_size:
            raise ValueError(f"{caller}: {self.world_size} workers need at least {self.world_size} "
                             f"examples, one a worker; x has {len(x)}.")
        bounds = _shard_bounds(len(x), self.world_size)
        return self._run("torch_syncbn", [(x[a:b],) for a, b in bounds])[0]


def synced_batchnorm(x, gamma, beta, dout, world_size, eps=1e-5, timeout=120.0, start_method=None):
    """Synchronized BN for real: world_size worker processes, torch.distributed over gloo.

    x (N, D) or (N, C, H, W) is split along N into world_size contiguous shards (as equal as
    possible: np.array_split's sizes), each worker process normalizes its shard with the
    statistics of the WHOLE batch, all-reduced over the workers (count, sum and sum of squares
    forward; sum(dout) and sum(dout * x_hat) backward), and the results are put back in x's
    order. Returns (out, dx, dgamma, dbeta), equal to BN on the whole batch (forward and every
    gradient) up to rounding. 1 <= world_size <= N.

    One call starts the workers, uses them once and stops them (in a `finally`: no worker
    outlives the call, also when one fails, which raises RuntimeError naming it, or when none
    answers within timeout seconds). Starting workers takes a second or more: for several
    calls, start them once with bnlib.SyncedBatchNormWorkers(world_size), whose doc says more
    (start_method, scripts, stdin).
    """
    caller = "synced_batchnorm"
    x, gamma, beta, dout = _sharded_bn_inputs(x, gamma, beta, dout, eps, caller)
    world_size = _check_world_size(world_size, len(x), caller)
    workers = SyncedBatchNormWorkers(world_size, timeout=timeout, start_method=start_method)
    try:
        return workers(x, gamma, beta, dout, eps)
    finally:
        workers.close()


# The torch side of notebook 09's experiments (torch imported inside, as in notebook 08's block).

def bn_mlp(width=64, seed=0):
    """784 -> width -> 10 ReLU network with one BN, as torch.nn.Sequential (float32):
    Linear(784, width, no bias) -> BatchNorm1d(width) -> ReLU -> Linear(width, 10); weights
    PyTorch's default init, drawn after torch.manual_seed(seed)."""
    import torch
    from torch import nn
    if isinstance(width, (bool, np.bool_)) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"bn_mlp: width must be a positive integer, got {width!r}.")
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, int(width), bias=False), nn.BatchNorm1d(int(width)), nn.ReLU(),
                         nn.Linear(int(width), 10))


def _ghost_class():
    """The per-shard BN module; made once, when torch is first needed."""
    global _GhostBatchNorm
    if _GhostBatchNorm is None:
        import torch
        import torch.nn.functional as F

        class GhostBatchNorm(torch.nn.Module):
            """A BatchNorm1d/2d that, in training mode, normalizes each of num_shards contiguous
            shards of the batch with the shard's own statistics (bnlib.convert_ghost_batchnorm)."""

            def __init__(self, bn, num_shards):
                super().__init__()
                self.bn, self.num_shards = bn, num_shards

            def forward(self, x):
                if not self.training or self.num_shards == 1:
                    return self.bn(x)
                if len(x) < self.num_shards:
                    raise ValueError(f"GhostBatchNorm: a batch of {len(x)} cannot be split into "
                                     f"{self.num_shards} shards of at least one example each.")
                shards = x.tensor_split(self.num_shards)        # np.array_split's sizes
                first = self.bn(shards[0])                      # shard 0 updates the running stats
                rest = [F.batch_norm(s, None, None, self.bn.weight, self.bn.bias, True, 0.0, self.bn.eps)
                        for s in shards[1:]]
                return torch.cat([first, *rest])

            def extra_repr(self):
                return f"num_shards={self.num_shards}"
        _GhostBatchNorm = GhostBatchNorm
    return _GhostBatchNorm


_GhostBatchNorm = None


def convert_ghost_batchnorm(model, num_shards):
    """Replace every BatchNorm1d/2d in a torch model by a per-shard ("ghost") BN; returns model.

    In training mode the new module splits each batch into num_shards contiguous shards
    (torch.tensor_split: as equal as possible, np.array_split's sizes) and normalizes each
    with its own mean and variance: BN as num_shards devices compute it in data-parallel
    training without synchronization, or Hoffer et al.'s ghost batches (2017, arXiv
    1705.08741) of batch / num_shards examples. gamma, beta and the running statistics stay
    the original module's; the running statistics are updated from shard 0 only, as on each
    device under torch's DistributedDataParallel (by default it copies device 0's buffers to
    the others before every forward). Eval mode: the original module, unchanged.
    num_shards=1 changes nothing. The mirror image of torch.nn.SyncBatchNorm's
    convert_sync_batchnorm; changes model in place (a BN model itself is returned wrapped).
    """
    import torch
    if isinstance(num_shards, (bool, np.bool_)) or not isinstance(num_shards, (int, np.integer)) \
            or num_shards < 1:
        raise ValueError(f"convert_ghost_batchnorm: num_shards must be a positive integer (the "
                         f"number of devices or ghost batches), got {num_shards!r}.")
    ghost, bn_types = _ghost_class(), (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    if isinstance(model, bn_types):
        return ghost(model, int(num_shards))
    for name, child in model.named_children():
        if isinstance(child, bn_types):
            model.add_module(name, ghost(child, int(num_shards)))
        else:
            convert_ghost_batchnorm(child, num_shards)
    return model


def _check_torch_batch(X, y, caller):
    X = np.asarray(X)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"{caller}: X must be (N, features) with N >= 2, got shape {X.shape}.")
    if y is not None:
        _labels(y, len(X), 10, caller)
    return X


def batch_gradients(model, X, y, micro_batches=1):
    """The gradient gradient accumulation computes for ONE batch (X, y), without a step.

    X (N, 784) is split into micro_batches contiguous parts (np.array_split's sizes); each part
    goes forward in training mode and backward with its cross-entropy weighted by its share,
    len(part) / N, and the gradients add up, as in a training loop that accumulates. With
    micro_batches=1 it is the plain gradient of the mean loss over the batch; with BN, more
    micro-batches give another gradient, because BN normalizes each part by itself. Every BN
    module's running statistics take one update per part, as in real accumulation.
    Returns {parameter name: gradient as a float64 numpy array}.
    """
    import torch
    X = _check_torch_batch(X, y, "batch_gradients")
    micro_batches = _check_world_size(micro_batches, len(X), "batch_gradients", "micro_batches", "parts")
    model.train()
    model.zero_grad()
    Xt, yt = torch.as_tensor(X), torch.as_tensor(np.asarray(y))
    for a, b in _shard_bounds(len(X), micro_batches):
        loss = torch.nn.functional.cross_entropy(model(Xt[a:b]), yt[a:b]) * ((b - a) / len(X))
        loss.backward()
    return {name: p.grad.double().numpy().copy() for name, p in model.named_parameters()
            if p.grad is not None}


def train_accumulated(model, optimizer, X, y, steps, batch_size, micro_batches, seed=0):
    """bnlib.train_torch with gradient accumulation: the same batches (drawn with replacement by
    numpy's default_rng(seed)), each split into micro_batches contiguous parts that go forward
    and backward one after the other (each loss weighted by its share of the batch), then ONE
    optimizer step. micro_batches=1 is train_torch exactly. Returns the (steps,) training
    losses, each the mean over its batch."""
    import torch
    caller = "train_accumulated"
    if int(steps) != steps or steps < 1 or int(batch_size) != batch_size or batch_size < 2:
        raise ValueError(f"{caller}: steps must be an integer >= 1 and batch_size >= 2; got "
                         f"{steps!r}, {batch_size!r}.")
    X = _check_torch_batch(X, y, caller)
    micro_batches = _check_world_size(micro_batches, int(batch_size), caller, "micro_batches", "parts")
    rng = np.random.default_rng(seed)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(np.asarray(y))
    bounds = _shard_bounds(int(batch_size), micro_batches)
    losses = []
    model.train()
    for _ in range(int(steps)):
        idx = torch.from_numpy(rng.integers(0, len(X), size=int(batch_size)))
        optimizer.zero_grad()
        total = 0.0
        for a, b in bounds:
            part = idx[a:b]
            loss = torch.nn.functional.cross_entropy(model(Xt[part]), yt[part])
            if micro_batches > 1:
                loss = loss * ((b - a) / int(batch_size))
            loss.backward()
            total += loss.item()
        optimizer.step()
        losses.append(total)
        if not np.isfinite(total):
            break
    return np.array(losses)


def shift_digits(X, kind, strength, seed=0):
    """The digits X (N, 784), values in [0, 1], under a distribution shift (notebook 09):
        "contrast":    x * strength                     (faded ink: strength < 1)
        "background":  strength + (1 - strength) * x    (a grey page of brightness strength)
        "noise":       x + strength * n, n ~ N(0, 1) per pixel, from default_rng(seed)
    Returns float32 (N, 784)."""
    kinds = ("contrast", "background", "noise")
    if kind not in kinds:
        raise ValueError(f"shift_digits: kind must be one of {kinds}, got {kind!r}.")
    X = _as_float_array(X, "shift_digits", "X").astype(np.float32)
    if X.ndim != 2:
        raise ValueError(f"shift_digits: X must be (N, 784), one flattened digit a row; got {X.shape}.")
    if not (isinstance(strength, (int, float, np.number)) and np.isfinite(strength) and strength >= 0):
        raise ValueError(f"shift_digits: strength must be a finite number >= 0, got {strength!r}.")
    s = np.float32(strength)
    if kind == "contrast":
        return X * s
    if kind == "background":
        return s + (1 - s) * X
    return X + s * np.random.default_rng(seed).standard_normal(X.shape, dtype=np.float32)


def adapt_batchnorm(model, X, batch_size=None, prior=0):
    """AdaBN (Li et al. 2016, arXiv 1603.04779): re-estimate every BN module's running statistics
    on X, unlabeled data from the new distribution, without touching any weight.

    Each BatchNorm1d/2d's running statistics are reset, then X goes forward in batches of
    batch_size (default: all of X at once) with the BN modules in training mode, everything
    else in eval mode, under torch.no_grad, and momentum=None (PyTorch's cumulative average):
    running_mean and running_var become the average of the batch statistics over X (the
    unbiased variance), as torch.optim.swa_utils.update_bn computes them. The layers before a
    BN normalize with the same batch statistics meanwhile.
    prior=N > 0 keeps some of the old (training) statistics, as Schneider et al. (2020, arXiv
    2006.16971) do: with n = len(X),
        running = N / (N + n) * old + n / (N + n) * estimated      (mean and variance alike)
    Momenta and every module's mode are given back. Changes model in place; returns it.
    """
    import torch
    caller = "adapt_batchnorm"
    X = _check_torch_batch(X, None, caller)
    batch_size = len(X) if batch_size is None else batch_size
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 2:
        raise ValueError(f"{caller}: batch_size must be an integer >= 2 (a batch of one has no "
                         f"variance) or None for all of X; got {batch_size!r}.")
    if not (isinstance(prior, (int, float, np.number)) and np.isfinite(prior) and prior >= 0):
        raise ValueError(f"{caller}: prior must be a number >= 0 (Schneider et al.'s N), got {prior!r}.")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError(f"{caller}: the model has no BatchNorm module to adapt.")
    old = {m: (m.momentum, m.running_mean.clone(), m.running_var.clone()) for m in bns}
    modes = {m: m.training for m in model.modules()}
    Xt = torch.as_tensor(X)
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for a in range(0, len(X), int(batch_size)):
                model(Xt[a:a + int(batch_size)])
            w = float(prior) / (float(prior) + len(X))
            for m in bns:
                m.running_mean.mul_(1 - w).add_(w * old[m][1])
                m.running_var.mul_(1 - w).add_(w * old[m][2])
    finally:
        for m in bns:
            m.momentum = old[m][0]
        for m, mode in modes.items():
            m.train(mode)
    return model



def accuracy_with_batch_statistics(model, X, y, batch_size, prior=0):
    """Test accuracy when every BN normalizes each test batch with that batch's own statistics,
    mixed with the running ones as Schneider et al. (2020, arXiv 2006.16971) propose: X is sent
    in consecutive batches of batch_size, and at every BatchNorm1d/2d, with n = len(batch)
    and N = prior,
        mean = N / (N + n) * running_mean + n / (N + n) * batch mean
        var  = N / (N + n) * running_var  + n / (N + n) * batch var (biased, as in training)
    prior=0 is training-mode BN on the test batches; a large prior tends to eval mode.
    Nothing in the model changes (no weight, no running statistic, no mode). Returns a float.
    """
    import torch
    import torch.nn.functional as F
    caller = "accuracy_with_batch_statistics"
    X = _check_torch_batch(X, y, caller)
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 2:
        raise ValueError(f"{caller}: batch_size must be an integer >= 2 (a batch of one has no "
                         f"variance), got {batch_size!r}.")
    if not (isinstance(prior, (int, float, np.number)) and np.isfinite(prior) and prior >= 0):
        raise ValueError(f"{caller}: prior must be a number >= 0 (Schneider et al.'s N), got {prior!r}.")
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    if not bns:
        raise ValueError(f"{caller}: the model has no BatchNorm module.")

    def mixed(m):
        def forward(x):
            dims = [0] + list(range(2, x.ndim))
            w = float(prior) / (float(prior) + len(x))
            mean = w * m.running_mean + (1 - w) * x.mean(dims)
            var = w * m.running_var + (1 - w) * x.var(dims, unbiased=False)
            return F.batch_norm(x, mean, var, m.weight, m.bias, False, 0.0, m.eps)
        return forward

    correct = 0
    Xt, yt = torch.as_tensor(X), np.asarray(y)
    with _eval_mode(model), torch.no_grad():
        for m in bns:
            m.forward = mixed(m)                 # this instance only; removed below
        try:
            for a in range(0, len(X), int(batch_size)):
                pred = model(Xt[a:a + int(batch_size)]).argmax(dim=1).numpy()
                correct += int(np.sum(pred == yt[a:a + int(batch_size)]))
        finally:
            for m in bns:
                del m.forward
    return correct / len(X)

# ==============================================================================================
# 7. Plots and widgets
# Colours, figures and sliders: how the course draws, never what it computes.
# ==============================================================================================

# One colour per method across the whole course (ColorBrewer's Dark2: distinct on white and
# for the common colour-vision deficiencies; its 8 colours used up, Batch Renormalization takes
# matplotlib's cyan, which neither Dark2 nor DATA_COLORS has). Keys: the MLP's norm names, None for no
# normalization, and the other variants the notebooks compare. Data that is not a method
# (two classes of digits, three features) takes DATA_COLORS, which no method uses.
METHOD_COLORS = {
    "batch": "#1b9e77",          # BatchNorm (training-mode batch statistics)
    None: "#d95f02",             # no normalization
    "layer": "#7570b3",          # LayerNorm
    "group": "#e7298a",          # GroupNorm
    "noisy_batch": "#66a61e",    # BatchNorm with injected noise (notebook 06)
    "batch_renorm": "#17becf",   # Batch Renormalization (notebook 07)
    "precise": "#e6ab02",        # BN with population statistics recomputed after training
    "residual": "#a6761d",       # BN in a residual network (notebook 08)
    "residual_zero_gamma": "#666666",   # ... with each block's last gamma starting at 0
}
BN_COLOR = METHOD_COLORS["batch"]
PLAIN_COLOR = METHOD_COLORS[None]
DATA_COLORS = ("#1f78b4", "#a6cee3", "#4d4d4d")


def method_color(method):
    """The course's colour of a method: "batch", "layer", "group", "noisy_batch", "batch_renorm",
    "precise", "residual", or None for no normalization (bnlib.METHOD_COLORS)."""
    if method not in METHOD_COLORS:
        raise KeyError(f"method_color: no colour for {method!r}; the methods are "
                       f"{sorted(map(str, METHOD_COLORS))}. Add it to bnlib.METHOD_COLORS, once.")
    return METHOD_COLORS[method]


def interactive_figure(nrows=1, ncols=1, figsize=(6, 4), **kwargs):
    """A figure for a slider to redraw: an ipympl canvas (a widget), header and toolbar off.

    The course's notebooks draw static figures with `%matplotlib inline` (plain images,
    visible everywhere); only these live figures are widgets. The figure is made outside
    pyplot, so the inline backend does not also print it as an image at the end of the cell.
    Show it inside a widget box, e.g. slider_panel([slider], fig, readout).
    Returns (fig, axes) as plt.subplots does.
    """
    import matplotlib.pyplot as plt
    from ipympl.backend_nbagg import new_figure_manager_given_figure
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout=kwargs.pop("layout", None))
    axes = fig.subplots(nrows, ncols, **kwargs)
    global _live_figures
    _live_figures += 1
    with plt.ioff():                                   # shown by its panel, not by a backend
        new_figure_manager_given_figure(1000 + _live_figures, fig)   # fig.canvas: ipympl's widget
    fig.canvas.header_visible = False
    fig.canvas.footer_visible = False
    fig.canvas.toolbar_visible = False
    fig.canvas.resizable = False
    # ipympl 0.10 sends each redraw made before the browser connects as the canvas's saved
    # picture, as base64 without its "data:image/png;base64," prefix: the browser cannot show
    # it, and in notebook 01 the broken picture kept the live figure from drawing at all.
    # slider_panel sends one proper picture instead.
    fig.canvas.syncing_data_url = False
    return fig, axes


_live_figures = 0


class LiveFigure:
    """Redraw only what a slider moves, on top of a saved picture of the rest (blitting).

    A full redraw of a figure (axes, ticks, labels, legend, layout) takes 30-100 ms, too slow
    to follow a dragged slider. The artists a slider changes (a line, points, an image, a
    title) are few: LiveFigure draws the rest once, keeps it as a bitmap, and on redraw()
    pastes the bitmap back and draws just those artists over it, a few ms.

        live = LiveFigure(fig, [line])     # the artists the callback changes
        ...in the callback: line.set_ydata(...); live.redraw()

    Anything else that changes (axis limits, a contour set shown or hidden) needs a full
    redraw: live.redraw(full=True). A full redraw also happens by itself when the browser
    asks for one (the figure is shown or resized); the bitmap is taken anew each time.
    """

    def __init__(self, fig, artists):
        self.fig, self.canvas = fig, fig.canvas
        self.artists = list(artists)
        for artist in self.artists:
            artist.set_animated(True)          # left out of full draws: drawn by _draw_artists
        self.background = None
        self.canvas.mpl_connect("draw_event", self._on_full_draw)

    def _on_full_draw(self, event):
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        self._draw_artists()

    def _draw_artists(self):
        for artist in self.artists:
            self.fig.draw_artist(artist)

    def follow(self, artists):
        """Switch to other artists (say, the image of another channel); the next redraw is full."""
        for artist in self.artists:
            artist.set_animated(False)
        self.artists = list(artists)
        for artist in self.artists:
            artist.set_animated(True)
        self.background = None

    def redraw(self, full=False):
        """Show the artists' new state: pasted background + the artists, or a full draw."""
        if full or self.background is None:
            self.canvas.draw_idle()            # a full draw (in the browser: when it asks for
            return                             # it); its draw_event saves the background
        self.canvas.restore_region(self.background)
        self._draw_artists()
        self.canvas.blit(self.fig.bbox)


def slider_panel(controls, fig, readout=None):
    """Controls above the live figure, with an optional readout widget beside them.

    The readout gets the CSS class "bn-readout" and the panel "bn-slider-panel",
    so the browser test can find the number a slider changes.

    The panel also carries a still picture of the figure as it is now, for places with no
    running kernel: a PNG beside the widget view in its display (GitHub, nbviewer and
    nbconvert show it), and the canvas's saved image in the notebook's widget state. Its
    text is one fixed sentence, so a stored output does not change with the sliders' repr.
    (JupyterLab itself shows the widget view, which stays empty until the cell is run.)
    """
    import ipywidgets as widgets
    top = list(controls)
    if readout is not None:
        readout.add_class("bn-readout")
        top.append(readout)
    still = _still_png(fig)
    canvas = fig.canvas
    canvas.syncing_data_url = True         # send this one picture (see interactive_figure)
    canvas._data_url = "data:image/png;base64," + still    # ipympl's picture without a kernel
    canvas.syncing_data_url = False
    canvas._size = tuple(fig.bbox.size)
    panel = _slider_panel_class()([widgets.HBox(top, layout=widgets.Layout(flex_flow="row wrap")),
                                   fig.canvas])
    panel.still_png = still
    panel.add_class("bn-slider-panel")
    return panel


class _Progress:
    """A progress line for a long loop, shown in a notebook and ending as a record of the run.

    While the loop runs, one display (an HTML <progress> bar and "name: 340/1,000 steps") is
    updated in place at most 5 times a second. close() leaves one line saying what happened:
    "name: 1,000 steps in 2.1 s", or "name: diverged at step 9 of 1,000 (loss nan) in 0.1 s".
    The seconds vary from run to run: tests/sanitize.cfg masks these lines for nbval. Outside
    a notebook (a script, pytest) nothing is shown.
    """

    def __init__(self, total, name, enabled=True):
        import time
        self.total, self.name, self.clock = total, name, time.perf_counter
        self.start = self.last = self.clock()
        self.handle = None
        if enabled and _in_notebook():
            from IPython.display import display
            self.handle = display(self._bundle(0), raw=True, display_id=True)

    def _bundle(self, done, final=None):
        text = final or f"{self.name}: {done:,}/{self.total:,} steps"
        colour = "#b00" if final and "diverged" in final else "inherit"
        bar = f'<progress value="{done}" max="{max(self.total, 1)}" style="width: 12em"></progress> '
        return {"text/plain": text,
                "text/html": f'<div class="bn-progress">{bar}<span style="color: {colour}">{text}</span></div>'}

    def update(self, done):
        now = self.clock()
        if self.handle is not None and now - self.last > 0.2:
            self.last = now
            self.handle.update(self._bundle(done), raw=True)

    def close(self, done, diverged=False, loss=None):
        if self.handle is None:
            return
        took = f"in {self.clock() - self.start:.1f} s"
        final = (f"{self.name}: diverged at step {done:,} of {self.total:,} (loss {loss:.3g}) {took}"
                 if diverged else f"{self.name}: {done:,} steps {took}")
        self.handle.update(self._bundle(done, final), raw=True)


def _in_notebook():
    """True inside a Jupyter kernel (where a display can be updated in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


_SLIDER_PANEL_TEXT = ("Live figure with sliders: run the notebook to drag them (a still picture of it "
                      "is stored beside this text).")


def _slider_panel_class():
    """ipywidgets.VBox whose display adds a still PNG and a fixed text (made on first use:
    bnlib imports ipywidgets only when a notebook asks for a widget)."""
    global _SliderPanel
    if _SliderPanel is None:
        import ipywidgets as widgets

        class SliderPanel(widgets.VBox):
            still_png = None

            def _repr_mimebundle_(self, **kwargs):
                bundle = super()._repr_mimebundle_(**kwargs)
                bundle["text/plain"] = _SLIDER_PANEL_TEXT
                if self.still_png:
                    bundle["image/png"] = self.still_png
                return bundle

        _SliderPanel = SliderPanel
    return _SliderPanel


_SliderPanel = None


def _still_png(fig):
    """fig as base64 PNG text (savefig draws the animated artists a LiveFigure moves too)."""
    import base64
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi="figure")
    fig.canvas.draw()       # savefig's draw put the moving artists into a LiveFigure's background
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# The nodes of BN's forward graph for one neuron: name -> (x, y, formula, local derivatives).
_BN_GRAPH_NODES = {
    "x": (0, 0, "$x_i$", ""),
    "mu": (1.7, 1.6, r"$\mu=\frac{1}{m}\sum_i x_i$", r"$\partial\mu/\partial x_i=1/m$"),
    "xc": (3.4, 0, r"$x_{c,i}=x_i-\mu$", r"$\partial/\partial x_i=1$" "\n" r"$\partial/\partial\mu=-1$"),
    "var": (5.1, 1.6, r"$\sigma^2=\frac{1}{m}\sum_i x_{c,i}^2$", r"$\partial\sigma^2/\partial x_{c,i}=2x_{c,i}/m$"),
    "std": (7.0, 3.2, r"$\mathrm{std}=\sqrt{\sigma^2+\epsilon}$",
            r"$d\,\mathrm{std}/d\sigma^2=1/(2\,\mathrm{std})$"),
    "inv": (9.0, 1.6, r"$\mathrm{invstd}=1/\mathrm{std}$",
            r"$d\,\mathrm{invstd}/d\,\mathrm{std}=-1/\mathrm{std}^2$"),
    "xhat": (9.0, -0.9, r"$\hat x_i=x_{c,i}\,\mathrm{invstd}$",
             r"$\partial/\partial x_{c,i}=\mathrm{invstd}$" "\n" r"$\partial/\partial\,\mathrm{invstd}=x_{c,i}$"),
    "gb": (11.6, 1.6, r"$\gamma,\ \beta$", ""),
    "out": (11.6, -0.9, r"$\mathrm{out}_i=\gamma\hat x_i+\beta$",
          r"$\partial/\partial\hat x_i=\gamma$" "\n" r"$\partial/\partial\gamma=\hat x_i,\ \partial/\partial\beta=1$"),
}


_BN_GRAPH_EDGES = [("x", "mu"), ("x", "xc"), ("mu", "xc"), ("xc", "var"), ("var", "std"), ("std", "inv"),
                   ("inv", "xhat"), ("xc", "xhat"), ("xhat", "out"), ("gb", "out")]


# Where each node's local-derivative label goes, relative to its box (default: below).
_BN_GRAPH_LABEL_SPOTS = {"mu": (0, 0.42, "center", "bottom"), "std": (0, 0.42, "center", "bottom"),
                         "var": (1.0, 0, "left", "center"), "inv": (0.1, -0.55, "left", "top")}


def plot_bn_graph(figsize=(11, 4.8)):
    """Draw BN's forward computational graph for one neuron (Algorithm 1 of Ioffe & Szegedy).

    Nine boxes, with the names of batchnorm_forward's lines: x -> mu -> x_c = x - mu -> var
    -> std = sqrt(var + eps) -> invstd = 1/std -> x_hat = x_c * invstd
    -> out = gamma * x_hat + beta, each box showing its forward formula with its local
    derivative(s) in grey; arrows point forward. Returns the figure.
    """
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=figsize)
    boxes = {}
    for name, (px, py, formula, local) in _BN_GRAPH_NODES.items():
        boxes[name] = ax.text(px, py, formula, ha="center", va="center", fontsize=12, zorder=3,
                              bbox=dict(boxstyle="round,pad=0.4", fc="#e6f4ef", ec=BN_COLOR))
        dx, dy, ha, va = _BN_GRAPH_LABEL_SPOTS.get(name, (0, -0.42, "center", "top"))
        ax.text(px + dx, py + dy, local, ha=ha, va=va, fontsize=9.5, color="0.3")
    for a, c in _BN_GRAPH_EDGES:
        ax.annotate("", xy=(0.5, 0.5), xycoords=boxes[c], xytext=(0.5, 0.5), textcoords=boxes[a],
                    arrowprops=dict(arrowstyle="-|>", color="0.45", shrinkA=2, shrinkB=2,
                                    patchA=boxes[a].get_bbox_patch(), patchB=boxes[c].get_bbox_patch()))
    ax.set_xlim(-0.6, 12.9)
    ax.set_ylim(-1.9, 4.0)
    ax.axis("off")
    ax.set_title("BN's forward graph for one neuron (local derivatives in grey); "
                 "backward runs the arrows in reverse")
    return fig


# ==============================================================================================
# 8. Exercise checks (the spoilers: each holds the answer to an exercise)
# One check per exercise: its cases, a reference from PyTorch or a closed form, its named mistakes.
# ==============================================================================================
# A check is data: its cases, a reference written with PyTorch or a closed form (never
# with bnlib's own answer), and a catalogue of named mistakes, each a wrong version of
# the learner's function. One driver, _run, calls the learner's function on copies of
# every case, says what is wrong with what came back, and names the catalogued mistake
# it recognised. Each public check_xxx(fn) prints one line and returns a Verdict.

# The fields of a check:
#   title       the name of the function the learner writes; every printed line starts with it
#   args        that function's parameters, in order
#   outputs     the name of what it returns, or a tuple of names when it returns several
#   cases       () -> list of argument tuples
#   describe    (*case) -> "x of shape (6, 4), eps=1e-05", to say in which case something is wrong
#   reference   (*case) -> the right result, from PyTorch or a closed form
#   mistakes    {what the learner did and what to do instead: a function making that mistake}
#   hint        added after a wrong value that no catalogued mistake explains
#   may_change  arguments the function may update in place (all others must stay as they were)
Check = namedtuple("Check", "title args outputs cases describe reference mistakes hint may_change",
                   defaults=("", ()))

TOL = 1e-8           # a value is right when |got - want| <= TOL * max(1, |want|), elementwise
FLOAT32_TOL = 1e-5   # ... and right to float32 precision within this
SEPARATION = 1e-3    # a mistake counts in a case only where it is this far from the right answer

_NOT_DONE = ("not done yet. Replace the `raise NotImplementedError` line with your code, "
             "run the cell, then run this check again.")
_LIBRARY_DIRS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


# --- the driver -----------------------------------------------------------------------------

def _run(check, fn):
    """Call fn on a copy of every case of check; print 'title: PASS' or what is wrong, in one
    line; return a Verdict."""
    def say(text, ok=False):
        print(f"{check.title}: {text}")
        return Verdict(ok)

    if not callable(fn):
        return say("not yet. Pass your function itself (its name, no parentheses), not what it returns.")
    cases = check.cases()
    wants, gots = [], []
    for case in cases:
        want = _expected(check, case)
        args = _copies(case)
        try:
            result = fn(*args)
        except Exception as exc:
            return say(_raised(check, exc))
        for name, before, after in zip(check.args, case, args):
            if isinstance(before, np.ndarray) and name not in check.may_change \
                    and not np.array_equal(before, after, equal_nan=True):
                return say(f"not yet. Your function changed its input {name} in place; work on a copy.")
        problem = _result_problem(check, result, number=want[0].ndim == 0)
        if problem:
            return say(f"not yet. {problem}")
        gots.append(result if isinstance(check.outputs, tuple) else (result,))
        wants.append(want)

    problems = [_value_problem(name, got, want, f"for {check.describe(*case)}", check.hint)
                for case, got_c, want_c in zip(cases, gots, wants)
                for name, got, want in zip(_names(check), got_c, want_c)]
    problems = [p for p in problems if p]
    if not problems:
        return say("PASS", ok=True)
    mistake = _recognised(check, cases, wants, gots)
    return say(f"not yet. {mistake or problems[0]}")


def _names(check):
    return check.outputs if isinstance(check.outputs, tuple) else (check.outputs,)


def _copies(case):
    return tuple(np.copy(a) if isinstance(a, np.ndarray) else a for a in case)


def _expected(check, case):
    want = check.reference(*_copies(case))
    want = want if isinstance(check.outputs, tuple) else (want,)
    return tuple(np.asarray(w, dtype=np.float64) for w in want)


def _raised(check, exc):
    """What to say when the learner's function raised exc: "not done yet" for the stub's own
    `raise NotImplementedError`, else the exception and the learner's line that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]          # [0] is _run's own call
    mine = [f for f in frames if f.filename != _run.__code__.co_filename
            and not f.filename.startswith(_LIBRARY_DIRS) and not f.filename.startswith("<frozen")]
    if isinstance(exc, NotImplementedError) and mine and mine[-1] is frames[-1] \
            and (not mine[-1].line or mine[-1].line.startswith("raise")):
        return _NOT_DONE
    text = f"your code raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
    if mine:
        return text + f" (in {mine[-1].name}, line {mine[-1].lineno}: {mine[-1].line})"
    if isinstance(exc, TypeError):
        return text + f". The check calls {check.title}({', '.join(check.args)})."
    return text


def _result_problem(check, result, number):
    """What is wrong with fn's result as a whole (None, a list, a tuple of the wrong length);
    None when it is a tuple of the right length or a single value. number: one number is due."""
    if isinstance(check.outputs, tuple):
        n, names = len(check.outputs), "(" + ", ".join(check.outputs) + ")"
        if result is None:
            return f"Your function returned None: did it forget to `return {names}`?"
        if isinstance(result, list):
            return f"Your function returned a list; return a tuple: {names}."
        if not isinstance(result, tuple):
            kind = "numpy array" if isinstance(result, np.ndarray) else type(result).__name__
            return f"Your function returned one {kind}; return {n} things as a tuple: {names}."
        if len(result) != n:
            return f"Your function returned a tuple of {len(result)}; return {n} things: {names}."
        return None
    name = check.outputs
    what = "one number" if number else "one numpy array"
    if result is None:
        return f"Your function returned None: did it forget to `return {name}`?"
    if isinstance(result, tuple):
        like = f", not ({name}, cache)" if len(result) == 2 else ""
        return f"Your function returned a tuple of {len(result)}; return {name} alone, {what}{like}."
    if isinstance(result, list):
        return f"Your function returned a list; return {name} as {what}" + \
            ("." if what == "one number" else " (np.array(...)).")
    return None


def _as_numbers(got, number):
    """got as a float-comparable numpy array, or a sentence saying why it is not one."""
    what = "one number" if number else "a numpy array"
    if got is None:
        return "is None: did your function forget to compute or return it?"
    if isinstance(got, (list, tuple, dict)):
        return f"is a {type(got).__name__}; return {what}."
    if type(got).__module__.split(".")[0] == "torch":
        return f"is a torch tensor; return {what}: " + ("t.item()." if number else "t.detach().numpy().")
    try:
        arr = np.asarray(got)
    except Exception:
        arr = None
    if isinstance(got, np.ndarray) and arr.dtype.kind not in "biuf":
        return f"is an array of {arr.dtype}; return {what} of real numbers."
    if arr is None or arr.dtype.kind not in "biuf":
        return f"is a {type(got).__name__}; return {what}."
    return arr.reshape(()) if number and arr.size == 1 else arr


def _error(got, want):
    """Largest |got - want| / max(1, |want|) over the elements: 0 where both are NaN or the
    same inf, inf where only one is, or when the shapes differ. NaN never passes."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
        same = (np.isnan(got) & np.isnan(want)) | (np.isinf(got) & (got == want))
        err = np.where(same, 0.0, np.where(np.isnan(err), np.inf, err))
    return float(err.max()) if err.size else 0.0


def _tolerance(arr):
    return FLOAT32_TOL if arr.dtype == np.float32 else TOL


def _value_problem(name, got, want, where, hint=""):
    """One sentence on what is wrong with one returned value; None when it is right."""
    arr = _as_numbers(got, number=want.ndim == 0)
    if isinstance(arr, str):
        return f"{name} {arr}"
    if arr.shape != want.shape:
        if want.ndim == 0:
            return f"{name} should be one number, not an array of shape {arr.shape} {where}."
        return f"{name} has shape {arr.shape}, expected {want.shape} {where}."
    err = _error(arr, want)
    if err <= TOL:
        return None
    for bad, what, look in ((np.isnan, "NaN", "0/0 or the square root of a negative number"),
                            (np.isinf, "inf", "a division by 0 or an overflow")):
        if np.any(bad(arr.astype(np.float64))):
            at = _index(np.argwhere(bad(arr.astype(np.float64)))[0]) if arr.ndim else ""
            return f"{name} has {what}{at and ' (first at index ' + at + ')'} {where}: look for {look}."
    low = arr.dtype.kind == "f" and arr.dtype.itemsize < 8
    if low and err <= FLOAT32_TOL:
        return (f"{name} is {arr.dtype}, right to {arr.dtype} precision; the check wants float64: compute "
                "in float64 (no .astype(np.float32); in torch, dtype=torch.float64).")
    dtype_note = f" ({name} is {arr.dtype}; compute in float64.)" if arr.dtype != np.float64 else ""
    hint = f" {hint}" if hint else ""
    if arr.ndim == 0:
        g, w = _digits(float(arr), float(want))
        return f"{name} {where}: you got {g}, expected {w}.{hint}{dtype_note}"
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.abs(arr - want) / np.maximum(1.0, np.abs(want))
    i = np.unravel_index(np.argmax(scaled), scaled.shape)
    g, w = _digits(float(arr[i]), float(want[i]))
    return (f"{name} {where} is off by up to {abs(float(arr[i]) - float(want[i])):.3g} (at index "
            f"{_index(i)}: got {g}, expected {w}).{hint}{dtype_note}")


def _index(i):
    return "(" + ", ".join(str(int(k)) for k in i) + ("," if len(i) == 1 else "") + ")"


def _digits(got, want):
    """got and want with enough significant digits to see that they differ."""
    for digits in (6, 9, 12, 17):
        g, w = f"{got:.{digits}g}", f"{want:.{digits}g}"
        if g != w:
            break
    return g, w


def _matches(got, wrong):
    arr = _as_numbers(got, number=np.ndim(wrong) == 0)
    return not isinstance(arr, str) and _error(arr, wrong) <= _tolerance(arr)


def _recognised(check, cases, wants, gots):
    """The first catalogued mistake that explains the learner's results, or None. A mistake
    explains them when, for one of the outputs, the learner's value equals the mistake's in
    every case where the mistake is SEPARATION away from the right answer (and there is one).
    A right value is never that close to a wrong one, so a right answer is never misnamed."""
    for hint, wrong_fn in check.mistakes.items():
        with np.errstate(all="ignore"):
            wrongs = [wrong_fn(*_copies(case)) for case in cases]
        if not isinstance(check.outputs, tuple):
            wrongs = [(w,) for w in wrongs]
        for k in range(len(_names(check))):
            apart = [c for c in range(len(cases)) if _error(wrongs[c][k], wants[c][k]) > SEPARATION]
            if apart and all(_matches(gots[c][k], wrongs[c][k]) for c in apart):
                return hint
    return None


# --- test batches ---------------------------------------------------------------------------

def _spread_batch(shape, seed):
    """float64 activations of `shape` whose channels (axis 1) have very different means and
    scales, with gamma, beta (C,) and an upstream gradient dout of x's shape."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    along_axis_1 = (1, c) + (1,) * (len(shape) - 2)
    shift = np.linspace(-4.0, 9.0, c).reshape(along_axis_1)
    scale = np.linspace(0.5, 3.0, c).reshape(along_axis_1)
    x = rng.standard_normal(shape) * scale + shift
    return x, 1.0 + rng.random(c), rng.standard_normal(c), rng.standard_normal(shape)


def _torch_batchnorm(x, gamma, beta, eps):
    """Training-mode BN by PyTorch for x (N, C, ...) as numpy arrays; the tensors need grad."""
    import torch
    import torch.nn.functional as F
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    return xt, gt, bt, F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)


def _torch_batchnorm_grads(dout, x, gamma, beta, eps):
    """(dx, dgamma, dbeta) by PyTorch autograd through training-mode BN."""
    import torch
    xt, gt, bt, out = _torch_batchnorm(x, gamma, beta, eps)
    out.backward(torch.from_numpy(dout))
    return xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


def _columns_backward(dout, x, gamma, eps):
    """The compact BN backward for (N, D) arrays, for the catalogued mistakes to start from."""
    m = len(x)
    invstd = 1.0 / np.sqrt(x.var(axis=0) + eps)
    x_hat = (x - x.mean(axis=0)) * invstd
    dbeta, dgamma = dout.sum(axis=0), (dout * x_hat).sum(axis=0)
    return m, invstd, x_hat, dgamma, dbeta


# --- notebook 01: standardize ---------------------------------------------------------------

def _standardize_cases():
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)            # integer input
    awkward = np.stack([rng.normal(1e7, 1.0, 40),                          # far from zero
                        np.full(40, 3.5),                                  # constant
                        rng.exponential(50.0, 40)], axis=1)
    return [(pixels,), (awkward,), (awkward[:, 2:].copy(),)]


def _standardize_reference(X):
    import torch
    t = torch.tensor(X, dtype=torch.float64)
    mu, sd = t.mean(dim=0), t.std(dim=0, correction=0)
    sd = torch.where(sd == 0, 1.0, sd)
    return ((t - mu) / sd).numpy(), mu.numpy(), sd.numpy()


def _standardized(X, mu, sd):
    return (X - mu) / sd, mu, sd


STANDARDIZE = Check(
    title="standardize", args=("X",), outputs=("X_std", "mu", "sd"),
    cases=_standardize_cases,
    describe=lambda X: f"X of shape {X.shape} ({X.dtype})",
    reference=_standardize_reference,
    mistakes={
        "sd is the sample std (1/(N-1)); use the population std (1/N), np.std's default.":
            lambda X: _standardized(X, X.mean(axis=0), np.where(X.std(axis=0) == 0, 1.0, X.std(axis=0, ddof=1))),
        "X_std has NaN: a constant column has sd = 0; use sd = 1 there.":
            lambda X: _standardized(X, X.mean(axis=0), X.std(axis=0)),
        "mu is one number: take one mean per column (axis=0).":
            lambda X: _standardized(X, X.mean(), X.std()),
    },
    hint="mu and sd are per column (axis=0); for a column far from 0, subtract mu before squaring.")


def check_standardize(standardize):
    """Exercise check (notebook 01): standardize(X) -> (X_std, mu, sd) for X (N, D):
    mu and sd (D,) are each column's mean and population standard deviation (1/N),
    sd = 1 where a column is constant, X_std = (X - mu) / sd as float64; X is left unchanged.
    Reference: torch.mean and torch.std(correction=0) on a float64 copy."""
    return _run(STANDARDIZE, standardize)


# --- notebook 02: line_fit_r2 ---------------------------------------------------------------

def _line_fit_cases():
    rng = np.random.default_rng(2)
    z = np.sort(rng.uniform(-3.0, 7.0, size=13))
    return [(z, 2.0 - 0.5 * z + rng.normal(0, 0.8, 13)),                  # a noisy line
            (z, np.exp(-0.4 * z)),                                         # a falling curve
            (z + 40.0, np.tanh(z / 3) + 5.0),                              # points far from 0
            (np.array([1.0, 2.0, 4.0]), np.array([3.0, 1.0, -3.0]))]       # an exact line


def _line_fit_reference(z, s):
    a, b = np.polyfit(z, s, 1)
    return 1.0 - np.sum((s - a * z - b) ** 2) / np.sum((s - s.mean()) ** 2)


def _r2_through_origin(z, s):
    a = np.sum(z * s) / np.sum(z * z)
    return 1.0 - np.sum((s - a * z) ** 2) / np.sum((s - s.mean()) ** 2)


def _r2_around_zero(z, s):
    a, b = np.polyfit(z, s, 1)
    return 1.0 - np.sum((s - a * z - b) ** 2) / np.sum(s ** 2)


LINE_FIT_R2 = Check(
    title="line_fit_r2", args=("z", "s"), outputs="R^2",
    cases=_line_fit_cases,
    describe=lambda z, s: f"{len(z)} points with z from {z.min():.3g} to {z.max():.3g}",
    reference=_line_fit_reference,
    mistakes={
        "You returned the correlation r; R^2 of a straight-line fit is its square.":
            lambda z, s: np.corrcoef(z, s)[0, 1],
        "Your line goes through the origin (s ~ a z); fit an intercept too: s ~ a z + b.":
            _r2_through_origin,
        "You divide by sum(s^2), the spread around 0; R^2 compares with the spread around "
        "mean(s): sum((s - mean(s))^2).":
            _r2_around_zero,
    },
    hint="Does your line have an intercept, and do you compare with the spread around mean(s)?")


def check_line_fit_r2(line_fit_r2):
    """Exercise check (notebook 02): line_fit_r2(z, s) -> R^2 (a float) of the least-squares
    straight line s ~ a * z + b through the points (z_i, s_i), z and s of shape (N,):
        R^2 = 1 - sum((s - a z - b)^2) / sum((s - mean(s))^2).
    Reference: numpy.polyfit(z, s, 1) and the residuals of that line."""
    return _run(LINE_FIT_R2, line_fit_r2)


# --- notebook 03: batchnorm_forward, batchnorm_backward -------------------------------------

def _forward_cases():
    cases = []
    for (n, d), eps in (((6, 4), 1e-5), ((2, 3), 1e-3), ((9, 5), 0.5)):
        x, gamma, beta, _ = _spread_batch((n, d), seed=n + d)
        cases.append((x, gamma, beta, eps))
    return cases


def _forward_reference(x, gamma, beta, eps):
    return _torch_batchnorm(x, gamma, beta, eps)[3].detach().numpy()


BATCHNORM_FORWARD = Check(
    title="batchnorm_forward", args=("x", "gamma", "beta", "eps"), outputs="out",
    cases=_forward_cases,
    describe=lambda x, gamma, beta, eps: f"x of shape {x.shape}, eps={eps}",
    reference=_forward_reference,
    mistakes={
        "You used the unbiased variance (1/(m-1)); training-mode BN uses the biased one, 1/m.":
            lambda x, gamma, beta, eps: gamma * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + beta,
        "You used eps outside the square root; it goes inside: sqrt(var + eps).":
            lambda x, gamma, beta, eps: gamma * (x - x.mean(0)) / (x.std(0) + eps) + beta,
        "You left out gamma and beta: the last step is out = gamma * x_hat + beta.":
            lambda x, gamma, beta, eps: (x - x.mean(0)) / np.sqrt(x.var(0) + eps),
        "You took the mean and variance of each row (axis=1); BN takes them per feature, "
        "over the batch (axis=0).":
            lambda x, gamma, beta, eps: gamma * (x - x.mean(1, keepdims=True)) / np.sqrt(
                x.var(1, keepdims=True) + eps) + beta,
    })


def check_batchnorm_forward(batchnorm_forward_fn):
    """Exercise check (notebook 03): batchnorm_forward_fn(x, gamma, beta, eps) -> out,
    x (N, D) -> out (N, D), training mode (batch mean, biased variance 1/m):
        out = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta,  statistics per column.
    Reference: torch.nn.functional.batch_norm(training=True)."""
    return _run(BATCHNORM_FORWARD, batchnorm_forward_fn)


def _backward_cases():
    cases = []
    for n, d in ((7, 3), (2, 4), (16, 5)):
        x, gamma, _, dout = _spread_batch((n, d), seed=10 * n + d)
        cases.append((dout, x, gamma, 1e-5))
    return cases


def _backward_reference(dout, x, gamma, eps):
    return _torch_batchnorm_grads(dout, x, gamma, np.zeros_like(gamma), eps)


def _backward_swapped(dout, x, gamma, eps):
    m, invstd, x_hat, dgamma, dbeta = _columns_backward(dout, x, gamma, eps)
    return gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma), dbeta, dgamma


def _backward_without_variance_path(dout, x, gamma, eps):
    m, invstd, x_hat, dgamma, dbeta = _columns_backward(dout, x, gamma, eps)
    return gamma * invstd / m * (m * dout - dbeta), dgamma, dbeta


def _backward_without_mean_path(dout, x, gamma, eps):
    m, invstd, x_hat, dgamma, dbeta = _columns_backward(dout, x, gamma, eps)
    return gamma * invstd / m * (m * dout - x_hat * dgamma), dgamma, dbeta


def _backward_without_gamma(dout, x, gamma, eps):
    m, invstd, x_hat, dgamma, dbeta = _columns_backward(dout, x, gamma, eps)
    return invstd / m * (m * dout - dbeta - x_hat * dgamma), dgamma, dbeta


BATCHNORM_BACKWARD = Check(
    title="batchnorm_backward", args=("dout", "x", "gamma", "eps"), outputs=("dx", "dgamma", "dbeta"),
    cases=_backward_cases,
    describe=lambda dout, x, gamma, eps: f"x of shape {x.shape}",
    reference=_backward_reference,
    mistakes={
        "dgamma and dbeta are swapped: return (dx, dgamma, dbeta).": _backward_swapped,
        "dx misses the term - x_hat * sum(dout * x_hat): the path through the variance. "
        "An all-ones dout would not notice.": _backward_without_variance_path,
        "dx misses the term - sum(dout): the path through the mean. (Each column of a right dx "
        "sums to 0: shifting a column of x changes no output.)": _backward_without_mean_path,
        "dx misses the factor gamma: the gradient reaches x_hat through out = gamma * x_hat + beta.":
            _backward_without_gamma,
    },
    hint="Each column of a right dx sums to 0 (shifting a column of x changes no output).")


def check_batchnorm_backward(batchnorm_backward_fn):
    """Exercise check (notebook 03): batchnorm_backward_fn(dout, x, gamma, eps) ->
    (dx, dgamma, dbeta), x and dout (N, D), dgamma and dbeta (D,), compact form:
        dx = gamma * invstd / m * (m * dout - sum(dout) - x_hat * sum(dout * x_hat)).
    Reference: PyTorch autograd through torch.nn.functional.batch_norm (training mode),
    with a random upstream gradient (an all-ones one would hide the x_hat term)."""
    return _run(BATCHNORM_BACKWARD, batchnorm_backward_fn)


def _scale_direction_cases():
    cases = []
    for (n, d), eps in (((12, 4), 1e-5), ((12, 4), 0.5), ((5, 3), 1e-3)):
        x, gamma, beta, dout = _spread_batch((n, d), seed=n + d + round(-np.log10(eps)))
        cases.append((dout, x, gamma, beta, eps))
    return cases


def _scale_direction_reference(dout, x, gamma, beta, eps):
    import torch
    dx, dgamma, _ = _torch_batchnorm_grads(dout, x, gamma, beta, eps)
    xt = torch.from_numpy(x)
    var = xt.var(dim=0, correction=0)
    x_hat = (xt - xt.mean(dim=0)) / torch.sqrt(var + eps)
    measured = (torch.from_numpy(dx) * x_hat).sum(dim=0)
    predicted = torch.from_numpy(gamma * dgamma) / torch.sqrt(var + eps) * eps / (var + eps)
    return measured.numpy(), predicted.numpy()


def _scale_direction(dout, x, gamma, eps, measured_with=None, factor=None):
    """Right (measured, predicted) by the compact formula, or with one part made wrong."""
    m, invstd, x_hat, dgamma, dbeta = _columns_backward(dout, x, gamma, eps)
    dx = gamma * invstd / m * (m * dout - dbeta - x_hat * dgamma)
    var = x.var(axis=0)
    measured = (dx * (x_hat if measured_with is None else measured_with(x))).sum(axis=0)
    return measured, gamma * invstd * dgamma * (eps / (var + eps) if factor is None else factor(var))


SCALE_DIRECTION_SUMS = Check(
    title="scale_direction_sums", args=("dout", "x", "gamma", "beta", "eps"),
    outputs=("measured", "predicted"),
    cases=_scale_direction_cases,
    describe=lambda dout, x, gamma, beta, eps: f"x of shape {x.shape}, eps={eps}",
    reference=_scale_direction_reference,
    mistakes={
        "predicted misses the factor eps / (var + eps): sum(x_hat^2) = m var / (var + eps), "
        "not m, so the two terms do not cancel.":
            lambda dout, x, gamma, beta, eps: _scale_direction(dout, x, gamma, eps, factor=np.ones_like),
        "predicted uses eps / var; var + eps comes from sum(x_hat^2) = m var / (var + eps).":
            lambda dout, x, gamma, beta, eps: _scale_direction(dout, x, gamma, eps, factor=lambda v: eps / v),
        "measured sums dx * x; the scaling direction in x_hat's units is sum(dx * x_hat) "
        "(sum(dx * x) is that divided by invstd).":
            lambda dout, x, gamma, beta, eps: _scale_direction(dout, x, gamma, eps, measured_with=lambda v: v),
    },
    hint="Per column (axis=0): measured = sum(dx * x_hat) with dx from the backward pass; "
         "predicted = gamma * invstd * dgamma * eps / (var + eps), var the biased (1/m) variance.")


def check_scale_direction_sums(scale_direction_sums):
    """Exercise check (notebook 03): scale_direction_sums(dout, x, gamma, beta, eps) ->
    (measured, predicted), each (D,) for x and dout (N, D): per column,
        measured  = sum_i dx_i * x_hat_i   (dx the gradient of sum(out * dout) by x),
        predicted = gamma * invstd * dgamma * eps / (var + eps),  dgamma = sum(dout * x_hat).
    Reference: PyTorch autograd through torch.nn.functional.batch_norm (training mode)."""
    return _run(SCALE_DIRECTION_SUMS, scale_direction_sums)


# --- notebook 04: update_running_stats, keras_running_var, digits_in_running_average --------

def _running_stats_cases():
    cases = []
    for n, d, momentum in ((3, 4, 0.3), (6, 2, 0.05), (16, 3, 0.1)):
        rng = np.random.default_rng(100 + n)
        x, _, _, _ = _spread_batch((n, d), seed=100 + 10 * n)
        cases.append((rng.standard_normal(d), 0.5 + rng.random(d), x, momentum))
    return cases


def _running_stats_reference(running_mean, running_var, x, momentum):
    import torch
    bn = torch.nn.BatchNorm1d(x.shape[1], momentum=momentum, dtype=torch.float64).train()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(running_mean))
        bn.running_var.copy_(torch.from_numpy(running_var))
        bn(torch.from_numpy(x))
    return bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()


def _running_stats(running_mean, running_var, mean_weight, var_weight, mu, var):
    """(new_mean, new_var), each weighting the batch statistic by its weight."""
    return ((1 - mean_weight) * running_mean + mean_weight * mu,
            (1 - var_weight) * running_var + var_weight * var)


def _unbiased(x):
    return x.var(axis=0, ddof=1)


RUNNING_STATS_UPDATE = Check(
    title="update_running_stats", args=("running_mean", "running_var", "x", "momentum"),
    outputs=("running_mean", "running_var"),
    cases=_running_stats_cases,
    describe=lambda running_mean, running_var, x, momentum: f"x of shape {x.shape}, momentum={momentum}",
    reference=_running_stats_reference,
    mistakes={
        "Your momentum weights the OLD value (Keras's convention). In PyTorch, momentum weights "
        "the NEW batch statistic: (1 - momentum) * running + momentum * batch.":
            lambda rm, rv, x, momentum: _running_stats(rm, rv, 1 - momentum, momentum, x.mean(0), _unbiased(x)),
        "running_var: you used the biased batch variance (1/N); PyTorch stores the unbiased one, "
        "var * N / (N - 1), while it normalizes with the biased one.":
            lambda rm, rv, x, momentum: _running_stats(rm, rv, momentum, momentum, x.mean(0), x.var(0)),
        "running_var: you used the standard deviation instead of the variance.":
            lambda rm, rv, x, momentum: _running_stats(rm, rv, momentum, momentum, x.mean(0),
                                                       np.sqrt(_unbiased(x))),
        "running_var: you used momentum weighting the OLD variance (Keras's convention).":
            lambda rm, rv, x, momentum: _running_stats(rm, rv, momentum, 1 - momentum, x.mean(0), _unbiased(x)),
    },
    may_change=("running_mean", "running_var"))


def check_running_stats_update(update_running_stats):
    """Exercise check (notebook 04): update_running_stats(running_mean, running_var, x, momentum)
    -> (new_running_mean, new_running_var); x (N, D), running statistics (D,). PyTorch's
    convention, momentum weighting the NEW batch statistic, the unbiased variance stored:
        new_mean = (1 - momentum) * running_mean + momentum * mean(x)
        new_var  = (1 - momentum) * running_var  + momentum * var(x) * N / (N - 1)
    Updating running_mean and running_var in place is allowed; x must stay as it was.
    Reference: torch.nn.BatchNorm1d's running_mean and running_var after one training step."""
    return _run(RUNNING_STATS_UPDATE, update_running_stats)


def _keras_var_cases():
    rng = np.random.default_rng(41)
    return [(1.0 + rng.random(5), 32, 50, 0.99), (0.2 + 2.0 * rng.random(3), 4, 3, 0.9),
            (0.5 + rng.random(4), 2, 200, 0.99), (3.0 + rng.random(6), 60, 10, 0.5)]


def _keras_var_reference(torch_running_var, m, steps, keras_momentum):
    """Closed form. Both start at 1 and weight the batch of j steps ago by (1 - k) k^j, so after
    `steps` updates each is k^steps * 1 + (the batches' part); PyTorch's batches' part is
    m / (m - 1) times Keras's (unbiased vs biased variance), the start's share is not:
        torch - k^steps = m / (m - 1) * (keras - k^steps)."""
    start_weight = keras_momentum ** steps
    return start_weight + (m - 1) / m * (torch_running_var - start_weight)


KERAS_RUNNING_VAR = Check(
    title="keras_running_var", args=("torch_running_var", "m", "steps", "keras_momentum"),
    outputs="running_var",
    cases=_keras_var_cases,
    describe=lambda torch_running_var, m, steps, keras_momentum:
        f"{len(torch_running_var)} features, m={m}, steps={steps}, keras_momentum={keras_momentum}",
    reference=_keras_var_reference,
    mistakes={
        "You scaled the whole running value by (m - 1) / m. Only the batches' part went through "
        "PyTorch's m / (m - 1); the initial 1 still carries weight keras_momentum**steps in both, "
        "unscaled.":
            lambda rv, m, steps, k: rv * (m - 1) / m,
        "You went the wrong way: PyTorch stores the unbiased variance, the larger one, so the "
        "batches' part of Keras's value is (m - 1) / m of PyTorch's, not m / (m - 1).":
            lambda rv, m, steps, k: k ** steps + m / (m - 1) * (rv - k ** steps),
        "The initial value's weight after `steps` updates is keras_momentum**steps (Keras's "
        "momentum weights the OLD value), not (1 - keras_momentum)**steps.":
            lambda rv, m, steps, k: (1 - k) ** steps + (m - 1) / m * (rv - (1 - k) ** steps),
        "You returned PyTorch's value unchanged; PyTorch stores the unbiased batch variance and "
        "Keras the biased one, so the two differ.":
            lambda rv, m, steps, k: np.array(rv, dtype=np.float64),
    },
    hint="Both start from running_var = 1. Write each running value as (weight of the start) * 1 "
         "+ (the batches' part): which part does PyTorch's m / (m - 1) touch?")


def check_keras_running_var(keras_running_var):
    """Exercise check (notebook 04): keras_running_var(torch_running_var, m, steps, keras_momentum)
    -> (D,), the running_var Keras's BatchNormalization(momentum=keras_momentum) holds after the
    same `steps` batches of m values per feature for which torch.nn.BatchNorm1d(momentum=
    1 - keras_momentum) holds torch_running_var (D,); both start at 1, PyTorch stores the unbiased
    batch variance and Keras the biased one. Reference: the closed form
        keras = k^steps + (m - 1) / m * (torch - k^steps),  k = keras_momentum."""
    return _run(KERAS_RUNNING_VAR, keras_running_var)


def _running_digits_cases():
    return [(0.1, 60), (0.01, 32), (0.5, 8), (0.001, 4), (0.3, 1)]


def _running_digits_reference(momentum, batch_size):
    """Closed form. The weights w_j = a (1 - a)^j (a = momentum) have
    sum_j w_j^2 = a^2 / (1 - (1 - a)^2) = a / (2 - a), and a mean of independent batch means,
    each as noisy as the mean of batch_size digits, weighted by w_j (sum 1), has the noise of
    the mean of batch_size / sum_j w_j^2 = batch_size * (2 - a) / a digits."""
    return batch_size * (2.0 - momentum) / momentum


RUNNING_AVERAGE_DIGITS = Check(
    title="digits_in_running_average", args=("momentum", "batch_size"), outputs="digits",
    cases=_running_digits_cases,
    describe=lambda momentum, batch_size: f"momentum={momentum}, batch_size={batch_size}",
    reference=_running_digits_reference,
    mistakes={
        "You returned batch_size / momentum, the horizon in digits (where the weights have "
        "fallen by a factor e). The effective number is batch_size / sum_j w_j^2, which counts "
        "the long tail of small weights too.":
            lambda momentum, batch_size: batch_size / momentum,
        "You counted batches, not digits: each batch holds batch_size digits.":
            lambda momentum, batch_size: (2.0 - momentum) / momentum,
        "Your weights follow Keras's convention, momentum weighting the OLD value; in PyTorch's "
        "the batch of j steps ago has weight momentum * (1 - momentum)**j.":
            lambda momentum, batch_size: batch_size * (1.0 + momentum) / (1.0 - momentum),
        "You divided by sum_j w_j, which is 1; the noise of a weighted mean goes with the sum of "
        "the SQUARED weights, sum_j w_j^2.":
            lambda momentum, batch_size: float(batch_size),
    },
    hint="Sum w_j^2 far enough (at momentum 0.001 the weights last thousands of steps), or use "
         "the geometric series sum_j r^j = 1 / (1 - r).")


def check_digits_in_running_average(digits_in_running_average):
    """Exercise check (notebook 04): digits_in_running_average(momentum, batch_size) -> float, the
    effective number of digits behind a running mean (PyTorch's momentum, weights
    w_j = momentum * (1 - momentum)^j on the batch of j steps ago, infinitely many steps):
    batch_size / sum_j w_j^2. Reference: the closed form batch_size * (2 - momentum) / momentum."""
    return _run(RUNNING_AVERAGE_DIGITS, digits_in_running_average)


# --- notebook 05: batchnorm_nhwc, spatial_batchnorm_backward --------------------------------

def _nhwc_cases():
    cases = []
    for shape, eps in (((3, 6, 5, 4), 1e-3), ((1, 7, 3, 2), 1e-5)):               # (N, C, H, W)
        x, gamma, beta, _ = _spread_batch(shape, seed=shape[1])
        cases.append((np.ascontiguousarray(x.transpose(0, 2, 3, 1)), gamma, beta, eps))  # (N, H, W, C)
    return cases


def _nhwc_reference(x, gamma, beta, eps):
    out = _torch_batchnorm(x.transpose(0, 3, 1, 2), gamma, beta, eps)[3]     # on the (N, C, H, W) view
    return out.detach().permute(0, 2, 3, 1).numpy()


def _nhwc_over(axes, ddof=0):
    """A channels-last BN taking its statistics over `axes`, with variance ddof."""
    def batchnorm_nhwc(x, gamma, beta, eps=1e-5):
        mu, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, ddof=ddof, keepdims=True)
        return gamma * (x - mu) / np.sqrt(var + eps) + beta
    return batchnorm_nhwc


BATCHNORM_NHWC = Check(
    title="batchnorm_nhwc", args=("x", "gamma", "beta", "eps"), outputs="out",
    cases=_nhwc_cases,
    describe=lambda x, gamma, beta, eps: f"x of shape {x.shape} (N, H, W, C), eps={eps}",
    reference=_nhwc_reference,
    mistakes={
        "You normalized with the unbiased variance (1/(m-1)); training-mode BN uses the biased one, 1/m.":
            _nhwc_over((0, 1, 2), ddof=1),
        "You took the statistics over axes (0, 2, 3), as for (N, C, H, W); here the channel is "
        "the last axis, so take them over axes (0, 1, 2).":
            _nhwc_over((0, 2, 3)),
    })


def check_batchnorm_nhwc(batchnorm_nhwc):
    """Exercise check (notebook 05): batchnorm_nhwc(x, gamma, beta, eps) for TensorFlow's
    channels-last layout, x (N, H, W, C) -> out (N, H, W, C), statistics per channel
    over N, H, W. Reference: torch.nn.functional.batch_norm on the (N, C, H, W) view."""
    return _run(BATCHNORM_NHWC, batchnorm_nhwc)


def _spatial_backward_cases():
    cases = []
    for shape in ((2, 3, 4, 5), (1, 4, 3, 3)):
        x, gamma, beta, dout = _spread_batch(shape, seed=7 + shape[1])
        cases.append((dout, x, gamma, beta, 1e-5))
    return cases


def _spatial_backward_reshaped(dout, x, gamma, beta, eps=1e-5):
    n, c, h, w = x.shape
    to_2d = lambda a: a.transpose(0, 2, 3, 1).reshape(n * h * w, c)
    m, invstd, x_hat, dgamma, dbeta = _columns_backward(to_2d(dout), to_2d(x), gamma, eps)
    dx = gamma * invstd / m * (m * to_2d(dout) - dbeta - x_hat * dgamma)
    return dx.reshape(n, c, h, w), dgamma, dbeta                        # no transpose back


SPATIAL_BATCHNORM_BACKWARD = Check(
    title="spatial_batchnorm_backward", args=("dout", "x", "gamma", "beta", "eps"),
    outputs=("dx", "dgamma", "dbeta"),
    cases=_spatial_backward_cases,
    describe=lambda dout, x, gamma, beta, eps: f"x of shape {x.shape} (N, C, H, W)",
    reference=_torch_batchnorm_grads,
    mistakes={
        "dx went back to (N, C, H, W) by reshape alone; reshape to (N, H, W, C) first, then "
        "transpose(0, 3, 1, 2).": _spatial_backward_reshaped,
    })


def check_spatial_batchnorm_backward(spatial_batchnorm_backward):
    """Exercise check (notebook 05): spatial_batchnorm_backward(dout, x, gamma, beta, eps)
    -> (dx, dgamma, dbeta) for x (N, C, H, W), dx of x's shape, dgamma and dbeta (C,).
    Reference: PyTorch autograd through torch.nn.functional.batch_norm (training mode)."""
    return _run(SPATIAL_BATCHNORM_BACKWARD, spatial_batchnorm_backward)


# --- notebook 06: x_hat_of_example ----------------------------------------------------------

def _x_hat_cases():
    rng = np.random.default_rng(6)
    return [(3.0, np.array([1.0]), 1e-5), (-2.5, 40.0 + 7.0 * rng.standard_normal(5), 1e-5),
            (0.75, rng.random(63), 0.1), (100.0, 90.0 + rng.standard_normal(3), 1e-3)]


def _x_hat_reference(value, batchmates, eps):
    import torch
    import torch.nn.functional as F
    batch = torch.from_numpy(np.concatenate([[value], batchmates])[:, None])
    return F.batch_norm(batch, None, None, training=True, eps=eps)[0, 0].item()


def _x_hat_in(batch, value, var, eps):
    return (value - batch.mean()) / np.sqrt(var + eps)


X_HAT_OF_EXAMPLE = Check(
    title="x_hat_of_example", args=("value", "batchmates", "eps"), outputs="x_hat",
    cases=_x_hat_cases,
    describe=lambda value, batchmates, eps: f"value={value} and {len(batchmates)} batchmate(s), eps={eps}",
    reference=_x_hat_reference,
    mistakes={
        "You used the batchmates' statistics without the example itself; mu and var are over "
        "the whole batch, the example included.":
            lambda value, mates, eps: _x_hat_in(mates, value, mates.var(), eps),
        "You used the unbiased variance (1/(m-1)); training-mode BN uses the biased one, 1/m.":
            lambda value, mates, eps: _x_hat_in(np.r_[value, mates], value, np.r_[value, mates].var(ddof=1), eps),
        "You used eps outside the square root; it goes inside: sqrt(var + eps).":
            lambda value, mates, eps: (value - np.r_[value, mates].mean()) / (np.r_[value, mates].std() + eps),
    })


def check_x_hat_of_example(x_hat_of_example):
    """Exercise check (notebook 06): x_hat_of_example(value, batchmates, eps) -> float, the
    normalized value of one example in the training-mode batch [value, *batchmates]:
        x_hat = (value - mu) / sqrt(var + eps), mu and var (biased, 1/m) over all m values.
    batchmates: (m - 1,). Reference: torch.nn.functional.batch_norm on the (m, 1) batch."""
    return _run(X_HAT_OF_EXAMPLE, x_hat_of_example)


# --- notebook 07: fold_linear_bn, groupnorm_rows --------------------------------------------

def _fold_cases():
    """float64 Linear + eval-mode BN parameters whose eps matters (some variances ~1e-3)."""
    cases = []
    for fan_in, fan_out, eps in ((5, 3, 1e-3), (2, 6, 1e-5)):
        rng = np.random.default_rng(fan_in * fan_out)
        W = rng.standard_normal((fan_in, fan_out))
        b, beta, mean = (rng.standard_normal(fan_out) for _ in range(3))
        gamma = 0.5 + rng.random(fan_out)
        var = np.where(np.arange(fan_out) % 2 == 0, 1e-3, 1.0) * (1 + rng.random(fan_out))
        cases.append((W, b, gamma, beta, mean, var, eps))
    return cases


def _fold_reference(W, b, gamma, beta, mean, var, eps):
    import torch
    from torch.nn.utils.fusion import fuse_linear_bn_eval
    fan_in, fan_out = W.shape
    linear = torch.nn.Linear(fan_in, fan_out).double().eval()
    bn = torch.nn.BatchNorm1d(fan_out, eps=eps).double().eval()
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(W.T))
        for t, a in ((linear.bias, b), (bn.weight, gamma), (bn.bias, beta),
                     (bn.running_mean, mean), (bn.running_var, var)):
            t.copy_(torch.from_numpy(a))
    fused = fuse_linear_bn_eval(linear, bn)
    return fused.weight.detach().numpy().T, fused.bias.detach().numpy()


def _folded(W, b, beta, mean, scale, keep_mean=True, keep_beta=True):
    return W * scale, (b - mean * keep_mean) * scale + beta * keep_beta


FOLD_LINEAR_BN = Check(
    title="fold_linear_bn", args=("W", "b", "gamma", "beta", "mean", "var", "eps"),
    outputs=("W_folded", "b_folded"),
    cases=_fold_cases,
    describe=lambda W, b, gamma, beta, mean, var, eps: f"W of shape {W.shape}, eps={eps}",
    reference=_fold_reference,
    mistakes={
        "W_folded ignores eps: divide by sqrt(var + eps), as BN does.":
            lambda W, b, gamma, beta, mean, var, eps: _folded(W, b, beta, mean, gamma / np.sqrt(var)),
        "W_folded divides by var + eps; BN divides by its square root.":
            lambda W, b, gamma, beta, mean, var, eps: _folded(W, b, beta, mean, gamma / (var + eps)),
        "b_folded forgets the running mean: it is (b - mean) * scale + beta.":
            lambda W, b, gamma, beta, mean, var, eps: _folded(W, b, beta, mean, gamma / np.sqrt(var + eps),
                                                              keep_mean=False),
        "b_folded forgets beta: it is (b - mean) * scale + beta.":
            lambda W, b, gamma, beta, mean, var, eps: _folded(W, b, beta, mean, gamma / np.sqrt(var + eps),
                                                              keep_beta=False),
    })


def check_fold_linear_bn(fold_linear_bn):
    """Exercise check (notebook 07): fold_linear_bn(W, b, gamma, beta, mean, var, eps)
    -> (W_folded, b_folded) for W (fan_in, fan_out), b and the BN arrays (fan_out,).
    Reference: torch.nn.utils.fusion.fuse_linear_bn_eval on the same torch layers."""
    return _run(FOLD_LINEAR_BN, fold_linear_bn)


def _groupnorm_cases():
    cases = []
    for n, d, num_groups, eps in ((4, 12, 3, 1e-5), (1, 10, 5, 1e-3), (6, 8, 1, 1e-5)):
        rng = np.random.default_rng(d + num_groups)
        x = rng.standard_normal((n, d)) * np.linspace(0.5, 4, d) + np.linspace(-3, 6, d)
        cases.append((x, 1 + rng.random(d), rng.standard_normal(d), num_groups, eps))
    return cases


def _groupnorm_reference(x, gamma, beta, num_groups, eps):
    import torch
    import torch.nn.functional as F
    out = F.group_norm(torch.from_numpy(x)[:, :, None], num_groups, torch.from_numpy(gamma),
                       torch.from_numpy(beta), eps=eps)
    return out[:, :, 0].numpy()


def _normalized_over(x, shape, axis, eps):
    """x normalized over `axis` of its view of `shape`, back in x's shape."""
    v = x.reshape(shape)
    return ((v - v.mean(axis=axis, keepdims=True)) / np.sqrt(v.var(axis=axis, keepdims=True) + eps)).reshape(x.shape)


GROUPNORM_ROWS = Check(
    title="groupnorm_rows", args=("x", "gamma", "beta", "num_groups", "eps"), outputs="out",
    cases=_groupnorm_cases,
    describe=lambda x, gamma, beta, num_groups, eps: f"x of shape {x.shape}, num_groups={num_groups}, eps={eps}",
    reference=_groupnorm_reference,
    mistakes={
        "Your groups take every G-th feature; a group is D / G CONSECUTIVE features: reshape "
        "to (N, G, D // G).":
            lambda x, gamma, beta, G, eps: gamma * _normalized_over(x, (len(x), -1, G), 1, eps) + beta,
        "You normalized each column over the batch: that is BatchNorm. GroupNorm takes "
        "statistics over each ROW's group of features.":
            lambda x, gamma, beta, G, eps: gamma * _normalized_over(x, x.shape, 0, eps) + beta,
        "You normalized each whole row as one group: that is LayerNorm. Split each row into "
        "num_groups groups of D // num_groups features.":
            lambda x, gamma, beta, G, eps: gamma * _normalized_over(x, x.shape, 1, eps) + beta,
    })


def check_groupnorm_rows(groupnorm_rows):
    """Exercise check (notebook 07): groupnorm_rows(x, gamma, beta, num_groups, eps) for
    x (N, D) -> out (N, D); each row's D features split into num_groups consecutive groups.
    Reference: torch.nn.functional.group_norm on x seen as (N, D, 1)."""
    return _run(GROUPNORM_ROWS, groupnorm_rows)


# --- notebook 08: dropout_variance_ratio ----------------------------------------------------

def _dropout_ratio_cases():
    rng = np.random.default_rng(8)
    return [(rng.normal(size=6), 0.5 + rng.random(6), 0.5), (np.zeros(3), np.ones(3), 0.2),
            (2.0 + rng.random(4), 0.1 + rng.random(4), 0.1)]


def _dropout_ratio_reference(mean, var, p):
    """Closed form: inverted dropout keeps a unit with probability 1 - p and multiplies it by
    1 / (1 - p), so E[d^2] = E[x^2] / (1 - p) = (var + mean^2) / (1 - p), E[d] = mean."""
    train_var = (var + mean ** 2) / (1 - p) - mean ** 2
    return train_var / var


DROPOUT_VARIANCE_RATIO = Check(
    title="dropout_variance_ratio", args=("mean", "var", "p"), outputs="ratio",
    cases=_dropout_ratio_cases,
    describe=lambda mean, var, p: f"{len(mean)} features, p={p}",
    reference=_dropout_ratio_reference,
    mistakes={
        "You left out the mean: a unit with mean c gains c^2 * p / (1 - p) of variance too, "
        "Var[d] = (var + mean^2) / (1 - p) - mean^2.":
            lambda mean, var, p: np.full_like(var, 1 / (1 - p)),
        "You used p as the probability to KEEP a unit; in torch.nn.Dropout(p) it is the "
        "probability to drop it, so the scale is 1 / (1 - p).":
            lambda mean, var, p: ((var + mean ** 2) / p - mean ** 2) / var,
        "You returned test / train; the ratio asked for is the training variance over the "
        "test variance (at least 1).":
            lambda mean, var, p: var / ((var + mean ** 2) / (1 - p) - mean ** 2),
        "You forgot the 1 / (1 - p) rescaling of inverted dropout.":
            lambda mean, var, p: ((var + mean ** 2) * (1 - p) - ((1 - p) * mean) ** 2) / var,
    })


def check_dropout_variance_ratio(dropout_variance_ratio):
    """Exercise check (notebook 08): dropout_variance_ratio(mean, var, p) -> (D,), per feature
    Var_train / Var_test of a unit x (mean (D,), variance var (D,)) after torch.nn.Dropout(p):
    in training d = x * mask / (1 - p), mask ~ Bernoulli(1 - p); at test d = x.
    Reference: the closed form (var + mean^2) / (1 - p) - mean^2, over var."""
    return _run(DROPOUT_VARIANCE_RATIO, dropout_variance_ratio)


# --- notebook 09: combine_mean_var, ghost_batchnorm -----------------------------------------

def _combine_cases():
    """Per-shard (count, mean, biased variance) of real shards: unequal sizes and far-apart
    means (where the between-shard term matters), shards of one value, and equal sizes."""
    cases = []
    for sizes, channels, seed in (((5, 2, 9), 3, 1), ((1, 1, 1), 2, 2), ((4, 4, 4, 4), 2, 3)):
        rng = np.random.default_rng(seed)
        shards = [rng.normal(3.0 * k, 1.0 + k, size=(n, channels)) for k, n in enumerate(sizes)]
        cases.append((np.array(sizes), np.array([s.mean(axis=0) for s in shards]),
                      np.array([s.var(axis=0) for s in shards])))
    return cases


def _combine_reference(counts, means, variances):
    """Closed form, the law of total variance: with n = sum(n_k) and mu = sum(n_k mu_k) / n,
    var = sum(n_k * (var_k + (mu_k - mu)^2)) / n."""
    n_k = counts.astype(np.float64)[:, None]
    mean = np.sum(n_k * means, axis=0) / n_k.sum()
    return mean, np.sum(n_k * (variances + (means - mean) ** 2), axis=0) / n_k.sum()


def _combine_unweighted(counts, means, variances):
    mean = means.mean(axis=0)
    return mean, np.mean(variances + (means - mean) ** 2, axis=0)


COMBINE_MEAN_VAR = Check(
    title="combine_mean_var", args=("counts", "means", "variances"), outputs=("mean", "var"),
    cases=_combine_cases,
    describe=lambda counts, means, variances: f"{len(counts)} shards of {counts.tolist()} values, "
                                              f"{means.shape[1]} channels",
    reference=_combine_reference,
    mistakes={
        "You averaged the shards as if they had the same size; weight each shard by its count "
        "n_k (a device with 9 examples says more than one with 2).": _combine_unweighted,
        "Your variance is the (weighted) average of the shards' variances only: it misses how far "
        "each shard's mean is from the global mean, + sum_k n_k (mu_k - mu)^2 / n.":
            lambda counts, means, variances: (_combine_reference(counts, means, variances)[0],
                                              np.sum(counts[:, None] * variances, axis=0) / counts.sum()),
        "You divided by n - 1: BN normalizes with the biased variance, divide by n = sum(n_k).":
            lambda counts, means, variances: (_combine_reference(counts, means, variances)[0],
                                              _combine_reference(counts, means, variances)[1]
                                              * counts.sum() / (counts.sum() - 1)),
    },
    hint="The global variance is the mean of (x - mu)^2 over all n values: split it shard by shard "
         "into each shard's own variance plus the distance of its mean from mu.")


def check_combine_mean_var(combine_mean_var):
    """Exercise check (notebook 09): combine_mean_var(counts, means, variances) -> (mean, var),
    each (C,): the statistics of the whole batch from each shard's count n_k (K,), mean
    (K, C) and biased variance (K, C), as torch's SyncBatchNorm merges the devices'.
    Reference: the closed form of the law of total variance."""
    return _run(COMBINE_MEAN_VAR, combine_mean_var)


def _ghost_cases():
    cases = []
    for n, d, shards in ((10, 3, 4), (12, 2, 3), (7, 4, 2)):
        x, gamma, beta, _ = _spread_batch((n, d), seed=n)
        cases.append((x, gamma, beta, shards, 1e-5))
    return cases


def _ghost_reference(x, gamma, beta, num_shards, eps):
    import torch
    import torch.nn.functional as F
    g, b = torch.from_numpy(gamma), torch.from_numpy(beta)
    return torch.cat([F.batch_norm(c, None, None, g, b, training=True, eps=eps)
                      for c in torch.from_numpy(x).tensor_split(num_shards)]).numpy()


def _bn_rows(x, gamma, beta, eps, ddof=0):
    return gamma * (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0, ddof=ddof) + eps) + beta


def _ghost_strided(x, gamma, beta, num_shards, eps):
    out = np.empty_like(x)
    for k in range(num_shards):
        out[k::num_shards] = _bn_rows(x[k::num_shards], gamma, beta, eps)
    return out


def _ghost_remainder_last(x, gamma, beta, num_shards, eps):
    size = len(x) // num_shards
    stops = [size * k for k in range(1, num_shards)] + [len(x)]
    starts = [0] + stops[:-1]
    return np.concatenate([_bn_rows(x[a:b], gamma, beta, eps) for a, b in zip(starts, stops)])


GHOST_BATCHNORM = Check(
    title="ghost_batchnorm", args=("x", "gamma", "beta", "num_shards", "eps"), outputs="out",
    cases=_ghost_cases,
    describe=lambda x, gamma, beta, num_shards, eps: f"x of shape {x.shape}, num_shards={num_shards}",
    reference=_ghost_reference,
    mistakes={
        "You normalized the whole batch at once: each of the num_shards shards needs its own mean "
        "and variance.": lambda x, gamma, beta, num_shards, eps: _bn_rows(x, gamma, beta, eps),
        "Your shards are strided (x[k::num_shards]); data parallelism gives each device a "
        "CONTIGUOUS block of the batch, as np.array_split does.": _ghost_strided,
        "Your shards have the wrong sizes: as equal as possible, with the FIRST N % num_shards "
        "shards one example larger (np.array_split, torch.tensor_split).": _ghost_remainder_last,
        "You used the unbiased variance (divide by n - 1) in a shard; BN normalizes with the biased one.":
            lambda x, gamma, beta, num_shards, eps: np.concatenate(
                [_bn_rows(s, gamma, beta, eps, ddof=1) for s in np.array_split(x, num_shards)]),
    })


def check_ghost_batchnorm(ghost_batchnorm):
    """Exercise check (notebook 09): ghost_batchnorm(x, gamma, beta, num_shards, eps) -> out of
    x's shape (N, D): x split into num_shards contiguous shards (np.array_split's sizes), each
    normalized with its own mean and biased variance, then gamma * x_hat + beta.
    Reference: torch's batch_norm on each torch.tensor_split chunk."""
    return _run(GHOST_BATCHNORM, ghost_batchnorm)
