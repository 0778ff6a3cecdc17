"""Recurrent cores for policies with memory (algo.memory): GRU and LSTM cells written out in plain torch ops,
unrolled over (T, N) sequences with the state reset where an episode starts.

The cells are our own few lines rather than nn.GRU / nn.LSTM because TRPO's Fisher-vector product runs
through torch.func (functional_call, jvp, vjp) and cuDNN's fused RNN kernels support neither forward-mode
derivatives nor swapped-in weights; the gate equations are PyTorch's (tested against nn.GRUCell and
nn.LSTMCell), and so is their initialization (nn.Linear's uniform, as nn.GRU's). A core's state is one
(N, state_size) tensor (the LSTM's h and c side by side), so rollout buffers and checkpoints hold every kind
the same way.
"""

import torch
from torch import nn

from rl.networks import Encoder, mlp

MEMORY_KINDS = ("none", "gru", "lstm")


class GRUCore(nn.Module):
    """h' = (1 - z) * n + z * h, with r, z = sigmoid(...) and n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""

    def __init__(self, in_dim, size):
        super().__init__()
        self.size, self.state_size = size, size
        self.input = nn.Linear(in_dim, 3 * size)  # r, z, n rows, as nn.GRUCell's weight_ih
        self.hidden = nn.Linear(size, 3 * size)  # as weight_hh

    def step(self, x, state):
        """x (N, in_dim), state (N, size) -> (output (N, size), new state)."""
        xr, xz, xn = self.input(x).chunk(3, -1)
        hr, hz, hn = self.hidden(state).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * state
        return h, h


class LSTMCore(nn.Module):
    """c' = f * c + i * g, h' = o * tanh(c'), gates i, f, g, o from W_i x + W_h h (nn.LSTMCell's order)."""

    def __init__(self, in_dim, size):
        super().__init__()
        self.size, self.state_size = size, 2 * size
        self.input = nn.Linear(in_dim, 4 * size)
        self.hidden = nn.Linear(size, 4 * size)

    def step(self, x, state):
        """x (N, in_dim), state (N, 2 * size): [h, c] -> (output h' (N, size), new state [h', c'])."""
        h, c = state.chunk(2, -1)
        i, f, g, o = (self.input(x) + self.hidden(h)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, torch.cat([h, c], -1)


CORES = {"gru": GRUCore, "lstm": LSTMCore}


def make_core(kind, in_dim, size):
    if kind not in CORES:
        raise ValueError(f"memory {kind!r}: must be one of {', '.join(CORES)}")
    return CORES[kind](in_dim, size)


def unroll(core, inputs, state, starts, every_state=False):
    """Run `core` over a batch of sequences.

    inputs (T, N, in_dim); state (N, state_size), the state before the first step; starts (T, N), 1 where
    step t begins an episode (its state is reset to zeros first, as the rollout does after same-step
    autoreset). Returns (outputs (T, N, size), the state after the last step), or with `every_state` the
    states after every step, (T, N, state_size), in its place.
    """
    keep = 1.0 - starts.to(inputs.dtype)
    outputs, states = [], []
    for t in range(inputs.shape[0]):
        out, state = core.step(inputs[t], state * keep[t, :, None])
        outputs.append(out)
        if every_state:
            states.append(state)
    return torch.stack(outputs), (torch.stack(states) if every_state else state)


class RecurrentNet(nn.Module):
    """Packed observations -> encoder (rl.networks.Encoder) -> recurrent core -> MLP head, over sequences.

    forward(obs, state, starts): obs (T * N, D) in a Batch's row order (row t * N + e), state (N, state_size)
    before step 0, starts (T, N) -> outputs (T * N, out_dim), the same row order.
    """

    def __init__(self, layout, cnn_options, kind, size, hidden_sizes, out_dim, activation, out_gain):
        super().__init__()
        self.encoder = Encoder(layout, cnn_options)
        self.core = make_core(kind, self.encoder.out_dim, size)
        self.head = mlp(size, hidden_sizes, out_dim, activation, out_gain)

    def forward(self, obs, state, starts, every_state=False):
        """With `every_state`: (outputs, the core's state after every step (T, N, state_size))."""
        steps, envs = starts.shape
        features = self.encoder(obs).view(steps, envs, -1)
        outputs, states = unroll(self.core, features, state, starts, every_state)
        outputs = self.head(outputs.reshape(steps * envs, -1))
        return (outputs, states) if every_state else outputs

    def step(self, obs, state):
        """One step for N envs from their states (no reset): (outputs (N, out_dim), new state)."""
        out, state = self.core.step(self.encoder(obs), state)
        return self.head(out), state

    @property
    def state_size(self):
        return self.core.state_size

