"""Recurrent cores (rl.memory) against independent computations: PyTorch's own GRU and LSTM cells, a
step-by-step re-run of every episode from a zero state, and the dense Hessian of the mean KL for the
Fisher-vector products through time (float64)."""

import functools

import gymnasium as gym
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from rl.fisher import FISHER_VECTOR_PRODUCTS
from rl.memory import GRUCore, LSTMCore, RecurrentNet, unroll
from rl.observations import ObservationLayout
from rl.policy import BernoulliActor, CategoricalActor, GaussianActor, MultiCategoricalActor

T, N, IN, H = 9, 3, 4, 5


def torch_cell(kind, core):
    """PyTorch's cell with the core's weights."""
    cell = (torch.nn.GRUCell if kind == "gru" else torch.nn.LSTMCell)(IN, H).double()
    with torch.no_grad():
        cell.weight_ih.copy_(core.input.weight)
        cell.bias_ih.copy_(core.input.bias)
        cell.weight_hh.copy_(core.hidden.weight)
        cell.bias_hh.copy_(core.hidden.bias)
    return cell


def make_core(kind, seed=0):
    torch.manual_seed(seed)
    return (GRUCore if kind == "gru" else LSTMCore)(IN, H).double()


def starts_with_episodes_inside(seed=1):
    starts = torch.rand(T, N, generator=torch.Generator().manual_seed(seed)) < 0.25
    starts[0, 0], starts[4, 1], starts[5, 1] = True, True, True  # an env starting, a one-step episode
    starts[0, 2] = False  # one env continues from a live state
    return starts


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_a_core_step_is_pytorchs_cell(kind):
    core = make_core(kind)
    cell = torch_cell(kind, core)
    x = torch.randn(7, IN, dtype=torch.float64)
    h, c = torch.randn(7, H, dtype=torch.float64), torch.randn(7, H, dtype=torch.float64)
    if kind == "gru":
        out, state = core.step(x, h)
        expected_h, expected_state = cell(x, h), cell(x, h)
    else:
        out, state = core.step(x, torch.cat([h, c], -1))
        expected_h, expected_c = cell(x, (h, c))
        expected_state = torch.cat([expected_h, expected_c], -1)
    assert torch.allclose(out, expected_h, atol=1e-14) and torch.allclose(state, expected_state, atol=1e-14)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_unrolling_equals_each_episode_rerun_from_a_zero_state(kind):
    core = make_core(kind, seed=2)
    cell = torch_cell(kind, core)
    inputs = torch.randn(T, N, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    state0 = torch.randn(N, core.state_size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    starts = starts_with_episodes_inside()
    outputs, final = unroll(core, inputs, state0, starts)
    for e in range(N):  # env by env, step by step, with PyTorch's cell
        h, c = state0[e:e + 1, :H], state0[e:e + 1, H:]
        for t in range(T):
            if starts[t, e]:
                h, c = torch.zeros_like(h), torch.zeros_like(c)
            if kind == "gru":
                h = cell(inputs[t, e:e + 1], h)
            else:
                h, c = cell(inputs[t, e:e + 1], (h, c))
            assert torch.allclose(outputs[t, e], h[0], atol=1e-13), (t, e)
        assert torch.allclose(final[e], torch.cat([h, c], -1)[0] if kind == "lstm" else h[0], atol=1e-13)


OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (IN,))
MULTI_SIZES = [3, 2]


def recurrent_actor(kind, head, seed=0):
    torch.manual_seed(seed)
    layout = ObservationLayout(OBS_SPACE)

    def network(out_dim, out_gain):
        return RecurrentNet(layout, {}, kind, H, (6,), out_dim, "tanh", out_gain)

    heads = {"gaussian": lambda: GaussianActor(network, 2, init_log_std=-0.3),
             "categorical": lambda: CategoricalActor(network, 3),
             "multi_categorical": lambda: MultiCategoricalActor(network, MULTI_SIZES),
             "bernoulli": lambda: BernoulliActor(network, 3)}
    actor = heads[head]().double()
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return actor


def reference_kl(head, old, new):
    if head == "gaussian":
        return kl_divergence(Normal(old[0], old[1].exp()), Normal(new[0], new[1].exp())).sum(-1)
    if head == "multi_categorical":  # independent blocks: the sum of one categorical's KL per block
        return sum(kl_divergence(Categorical(logits=o), Categorical(logits=n)) for o, n in
                   zip(torch.split(old[0], MULTI_SIZES, -1), torch.split(new[0], MULTI_SIZES, -1)))
    if head == "bernoulli":
        return kl_divergence(Bernoulli(logits=old[0]), Bernoulli(logits=new[0])).sum(-1)
    return kl_divergence(Categorical(logits=old[0]), Categorical(logits=new[0]))


@functools.cache
def case(kind, head):
    """(actor, obs, state, starts, dense Hessian of the mean KL over the sequences)."""
    actor = recurrent_actor(kind, head)
    obs = torch.randn(T * N, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    state = 0.5 * torch.randn(N, actor.net.core.state_size, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(6))
    starts = starts_with_episodes_inside(seed=7)
    names = [name for name, _ in actor.named_parameters()]
    shapes = [p.shape for p in actor.parameters()]
    with torch.no_grad():
        old = actor(obs, state, starts)

    def mean_kl(weights):
        tensors = {n: t.view(s) for n, t, s in zip(names, torch.split(weights, [s.numel() for s in shapes]), shapes)}
        return reference_kl(head, old, functional_call(actor, tensors, (obs, state, starts))).mean()

    flat = parameters_to_vector(actor.parameters()).detach()
    return actor, obs, state, starts, torch.autograd.functional.hessian(mean_kl, flat, vectorize=True)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("head", ["gaussian", "categorical", "multi_categorical", "bernoulli"])
@pytest.mark.parametrize("method", ["analytic", "hessian"])
def test_fvp_through_time_matches_the_dense_kl_hessian(kind, head, method):
    actor, obs, state, starts, hessian = case(kind, head)
    assert hessian.abs().max() > 1e-3
    product = FISHER_VECTOR_PRODUCTS[method](actor, obs, state, starts)
    for v in torch.randn(3, hessian.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(8)):
        expected = hessian @ v
        assert torch.allclose(product(v), expected, rtol=1e-8, atol=1e-10), (product(v) - expected).abs().max()


def test_the_state_before_an_episode_start_does_not_reach_it():
    # Changing env 1's state and its inputs before its start at t=4 leaves its outputs from t=4 on unchanged.
    actor = recurrent_actor("gru", "categorical", seed=3)
    obs = torch.randn(T * N, IN, dtype=torch.float64)
    starts = torch.zeros(T, N, dtype=torch.bool)
    starts[4, 1] = True
    state = torch.zeros(N, H, dtype=torch.float64)
    other_obs, other_state = obs.clone(), state.clone()
    other_state[1] = 1.0
    other_obs.view(T, N, IN)[:4, 1] += 1.0
    (logits,), (other,) = actor(obs, state, starts), actor(other_obs, other_state, starts)
    env1 = torch.arange(T) * N + 1
    assert torch.allclose(logits[env1[4:]], other[env1[4:]], atol=1e-14)
    assert not torch.allclose(logits[env1[:4]], other[env1[:4]])
