"""Encoders: networks from a packed observation (rl.observations) to features, and the MLP on top."""

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


def cnn(image_shape, channels, kernels, strides, features):
    """Conv(+ReLU) layers, flatten, Linear(+ReLU) to `features`; Nature-CNN (Mnih et al. 2015) with the
    defaults (32/64/64 channels, kernels 8/4/3, strides 4/2/1, 512 features). Orthogonal init, gain sqrt(2)."""
    layers, in_channels = [], image_shape[0]
    for out_channels, kernel, stride in zip(channels, kernels, strides):
        layers += [_orthogonal(nn.Conv2d(in_channels, out_channels, kernel, stride), math.sqrt(2)), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.Flatten())
    with torch.no_grad():
        flat = nn.Sequential(*layers)(torch.zeros(1, *image_shape)).shape[1]
    layers += [_orthogonal(nn.Linear(flat, features), math.sqrt(2)), nn.ReLU()]
    return nn.Sequential(*layers)


def cnn_output_side(side, kernels, strides):
    """The side of the last conv layer's output for an input side, or <= 0 when the image is too small."""
    for kernel, stride in zip(kernels, strides):
        side = (side - kernel) // stride + 1 if side >= kernel else 0
    return side


# The smallest image side whose convolutions run on channels-last inputs. On the CPU, oneDNN's channels-last
# convolutions train Atari's CNN (84x84) 1.3-1.44x faster than on NCHW, and MinAtar's (10x10) and
# MiniGrid's (7x7) only 0.52-0.88x as fast (scripts/benchmark_cnn.py, 1 thread, AVX-512). Conv weights'
# gradients may then come out channels-last, so gradients are flattened with rl.optim.flatten, never
# parameters_to_vector's views.
CHANNELS_LAST_MIN_SIDE = 32


def conv_memory_format(image_shape):
    """The memory layout of a (C, H, W) image's CNN input: channels-last for large images, else NCHW."""
    return torch.channels_last if min(image_shape[1:]) >= CHANNELS_LAST_MIN_SIDE else torch.contiguous_format


class Encoder(nn.Module):
    """Features of a packed observation: each image piece through its own CNN (scaled, permuted to CHW), the
    vector and one-hot pieces as they are, concatenated in layout order; the mask piece is skipped
    (SB3's CombinedExtractor, on one tensor)."""

    def __init__(self, layout, cnn_options):
        super().__init__()
        self.images = [(p.offset, p.size, p.image_shape, p.channels_last, p.scale) for p in layout.of_kind("image")]
        self.cnns = nn.ModuleList(cnn(shape, **cnn_options) for _, _, shape, _, _ in self.images)
        self.memory_formats = [conv_memory_format(shape) for _, _, shape, _, _ in self.images]
        self.flat_slices = [(p.offset, p.offset + p.size) for p in layout.pieces if p.kind in ("vector", "onehot")]
        self.out_dim = (len(self.images) * (cnn_options["features"] if self.images else 0)
                        + sum(end - start for start, end in self.flat_slices))

    def forward(self, obs):
        parts = []
        images = zip(self.images, self.memory_formats, self.cnns)
        for (offset, size, (channels, height, width), channels_last, scale), memory_format, net in images:
            pixels = obs[:, offset:offset + size]
            if channels_last:
                pixels = pixels.reshape(-1, height, width, channels).permute(0, 3, 1, 2)
            else:
                pixels = pixels.reshape(-1, channels, height, width)
            parts.append(net(pixels.contiguous(memory_format=memory_format) * scale))
        parts += [obs[:, start:end] for start, end in self.flat_slices]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def encoded_mlp(layout, cnn_options, hidden_sizes, out_dim, activation, out_gain, encoder=None):
    """The network from a packed observation to `out_dim` outputs: today's plain MLP on a flat layout (the
    fast paths of rl.rollout and rl.fisher apply) when the packed vector holds only features, else Encoder
    then MLP. `encoder`: an Encoder shared with another network (PPO's algo.share_encoder), else its own."""
    if encoder is None and not layout.of_kind("image") and layout.mask is None:  # the packed vector is the features
        return mlp(layout.dim, hidden_sizes, out_dim, activation, out_gain)
    encoder = encoder or Encoder(layout, cnn_options)
    return nn.Sequential(encoder, mlp(encoder.out_dim, hidden_sizes, out_dim, activation, out_gain))


def shared_encoder(actor, critic):
    """The Encoder the actor's and the critic's networks share, or None."""
    first = getattr(actor, "net", None)
    if isinstance(first, nn.Sequential) and isinstance(critic.net, nn.Sequential) and isinstance(first[0], Encoder) \
            and first[0] is critic.net[0]:
        return first[0]
    return None
