"""The PyTorch references the tests compare bnlib with: the one place where tests define them.

Each function redoes in PyTorch (functional ops, modules, autograd) what a bnlib function
does in numpy, so that a test's expected values never come from bnlib itself.

mlp_loss(params, model, x, y) runs the same layers as bnlib.MLP `model` (activation, norm
layer, no bias before a norm) with the weights `params` ({name: torch tensor}, named as
model.parameters() names them) and returns the mean cross-entropy.
"""
import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "linear": lambda z: z}
ACTIVATION_MODULES = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "linear": torch.nn.Identity}


# --- normalization: forward and backward by autograd ----------------------------------------

def torch_grads(fn, x, gamma, beta, dout):
    """(out, dx, dgamma, dbeta) of out = fn(x, gamma, beta) for upstream gradient dout, by autograd."""
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    out = fn(xt, gt, bt)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


def torch_batchnorm(x, gamma, beta, dout, eps=1e-5):
    """(out, dx, dgamma, dbeta) of torch.nn.functional.batch_norm in training mode."""
    return torch_grads(lambda a, g, b: F.batch_norm(a, None, None, g, b, training=True, eps=eps),
                       x, gamma, beta, dout)


def torch_batch_renorm(x, gamma, beta, dout, running_mean, running_var, r_max, d_max, eps=1e-5):
    """(out, dx, dgamma, dbeta) of Batch Renormalization's training step (Ioffe 2017, arXiv
    1702.03275, Algorithm 1) written in torch ops, r and d detached (the paper's stop_gradient);
    x (N, C) or (N, C, H, W), the running statistics (C,) from before the step."""
    def renorm(a, g, b):
        dims, shape = [0] + list(range(2, a.dim())), [1, -1] + [1] * (a.dim() - 2)
        mu_b = a.mean(dims, keepdim=True)
        std_b = torch.sqrt(a.var(dims, unbiased=False, keepdim=True) + eps)
        std = torch.sqrt(torch.tensor(running_var).view(shape) + eps)
        r = (std_b / std).clamp(1 / r_max, r_max).detach()
        d = ((mu_b - torch.tensor(running_mean).view(shape)) / std).clamp(-d_max, d_max).detach()
        return g.view(shape) * ((a - mu_b) / std_b * r + d) + b.view(shape)
    return torch_grads(renorm, x, gamma, beta, dout)


def torch_running_stats_per_step(batches, momentum):
    """running_mean and running_var of torch.nn.BatchNorm1d after each training step."""
    bn = torch.nn.BatchNorm1d(batches.shape[2], momentum=momentum, dtype=torch.float64)
    means, variances = [], []
    for x in batches:
        bn(torch.from_numpy(x))
        means.append(bn.running_mean.numpy().copy())
        variances.append(bn.running_var.numpy().copy())
    return np.array(means), np.array(variances)


def torch_linear_bn(W, b, gamma, beta, mean, var, eps):
    """torch Linear (bnlib's (fan_in, fan_out) W) and eval-mode BatchNorm1d with these values."""
    linear = torch.nn.Linear(*W.shape).double().eval()
    bn = torch.nn.BatchNorm1d(W.shape[1], eps=eps).double().eval()
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(W.T))
        for t, a in ((linear.bias, b), (bn.weight, gamma), (bn.bias, beta),
                     (bn.running_mean, mean), (bn.running_var, var)):
            t.copy_(torch.from_numpy(a))
    return linear, bn


# --- elementwise functions and small losses --------------------------------------------------

def torch_sigmoid(z):
    """torch.sigmoid of z in float64, as a numpy array."""
    return torch.sigmoid(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


def torch_logreg_loss(w, X, y, b):
    """Logistic regression's mean loss, BCEWithLogits of X @ w + b against labels y (a tensor)."""
    z = torch.as_tensor(X) @ w + b
    return F.binary_cross_entropy_with_logits(z, torch.as_tensor(y))


# --- bnlib.MLP in PyTorch ---------------------------------------------------------------------

def _norm(layer, z, gamma, beta):
    """z through the torch functional op of bnlib norm layer `layer` (BN in training mode)."""
    kind = type(layer).__name__
    if kind == "LayerNorm":
        return F.layer_norm(z, z.shape[1:], gamma, beta, eps=layer.eps)
    if kind == "GroupNorm":
        return F.group_norm(z[:, :, None], layer.num_groups, gamma, beta, eps=layer.eps)[:, :, 0]
    return F.batch_norm(z, None, None, gamma, beta, training=True, eps=layer.eps)


def mlp_params(model):
    """model's parameters as leaf tensors that collect gradients."""
    return {name: torch.tensor(p, requires_grad=True) for name, p, _ in model.parameters()}


def mlp_loss(params, model, x, y):
    """Mean cross-entropy of model's architecture run in PyTorch with the weights params."""
    act = ACTIVATIONS[model.activation]
    h, n_hidden = torch.tensor(x), len(model.linears) - 1
    for i in range(n_hidden):
        z = h @ params[f"W{i}"] + (params[f"b{i}"] if f"b{i}" in params else 0)
        if model.norms:
            z = _norm(model.norms[i], z, params[f"gamma{i}"], params[f"beta{i}"])
        h = act(z)
    logits = h @ params[f"W{n_hidden}"] + params[f"b{n_hidden}"]
    return F.cross_entropy(logits, torch.tensor(y))


def mlp_grads(model, x, y):
    """(loss, {name: gradient}) from PyTorch autograd for model's weights on (x, y)."""
    params = mlp_params(model)
    loss = mlp_loss(params, model, x, y)
    loss.backward()
    return loss.item(), {name: t.grad.numpy() for name, t in params.items()}


def hidden_layers_as_sequential(model):
    """A float64 torch.nn.Sequential of a BN MLP's hidden layers: Linear (no bias), BatchNorm1d, activation."""
    layers = []
    for lin, bn in zip(model.linears[:-1], model.norms):
        t_lin = torch.nn.Linear(*lin.W.shape, bias=False).double()
        t_bn = torch.nn.BatchNorm1d(lin.W.shape[1]).double()
        with torch.no_grad():
            t_lin.weight.copy_(torch.from_numpy(lin.W.T))
            t_bn.weight.copy_(torch.from_numpy(bn.gamma))
            t_bn.bias.copy_(torch.from_numpy(bn.beta))
        layers += [t_lin, t_bn, ACTIVATION_MODULES[model.activation]()]
    return torch.nn.Sequential(*layers)
