"""bnlib.MLP's architecture written in PyTorch: the reference its tests compare with.

mlp_loss(params, model, x, y) runs the same layers as `model` (activation, norm layer,
no bias before a norm) with the weights `params` ({name: torch tensor}, named as
model.parameters() names them) and returns the mean cross-entropy.
"""
import torch
import torch.nn.functional as F

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "linear": lambda z: z}


def _norm(layer, z, gamma, beta):
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
