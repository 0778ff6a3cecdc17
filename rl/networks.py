"""Encoders: networks from an observation to features. Today the MLP on flat vectors."""

import math

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}


def plain_mlp(net):
    """(linears, activations) when `net` is an MLP as `mlp` builds it, else None.

    Fast paths (the rollout's acting forward, the analytic Fisher-vector product) use this structure;
    anything else takes the generic path.
    """
    layers = list(net) if isinstance(net, nn.Sequential) else []
    linears, activations = layers[::2], layers[1::2]
    if len(layers) % 2 == 0 or any(type(m) is not nn.Linear for m in linears) or any(
            type(m) not in ACTIVATIONS.values() for m in activations):
        return None
    return linears, activations


def activation_derivative(activation, z, h):
    """d activation(z) / dz from the pre-activation z and the output h, for the activations of `mlp`."""
    if isinstance(activation, nn.Tanh):
        return 1.0 - h * h
    if isinstance(activation, nn.ReLU):
        return (z > 0).to(z.dtype)
    return torch.where(z > 0, torch.ones_like(z), h + activation.alpha)  # ELU


def mlp(in_dim, hidden_sizes, out_dim, activation="tanh", out_gain=1.0):
    """MLP with orthogonal init (gain sqrt(2) on hidden layers, `out_gain` on the last), zero biases."""
    layers, dim = [], in_dim
    for width in hidden_sizes:
        layers += [_orthogonal(nn.Linear(dim, width), math.sqrt(2)), ACTIVATIONS[activation]()]
        dim = width
    layers.append(_orthogonal(nn.Linear(dim, out_dim), out_gain))
    return nn.Sequential(*layers)


def _orthogonal(layer, gain):
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer
