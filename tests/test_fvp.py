"""Both Fisher-vector products against the dense Hessian of the mean KL, computed independently."""

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from rl.fisher import FISHER_VECTOR_PRODUCTS, _is_plain_mlp_actor
from rl.networks import Encoder
from rl.policy import Agent

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (5,))
ACTION_SPACES = {"gaussian": gym.spaces.Box(-1.0, 1.0, (3,)), "categorical": gym.spaces.Discrete(4),
                 "multi_categorical": gym.spaces.MultiDiscrete([3, 2, 4]), "bernoulli": gym.spaces.MultiBinary(3)}
KINDS = list(ACTION_SPACES)


def tiny_actor(kind, seed=0, activation="tanh"):
    torch.manual_seed(seed)
    agent = Agent(OBS_SPACE, ACTION_SPACES[kind], actor_hidden_sizes=(12, 10), critic_hidden_sizes=(4,),
                  init_log_std=-0.4, activation=activation).double()
    with torch.no_grad():  # move away from the init so the output layer is not near zero
        for p in agent.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return agent.actor


def distribution(kind, outputs):
    if kind == "gaussian":
        mean, log_std = outputs
        return Normal(mean, log_std.exp())
    return Categorical(logits=outputs[0])


def reference_kl(kind, old_outputs, outputs, action_space=None):
    """KL(old || new) per sample, (B,), from torch.distributions alone."""
    if kind == "multi_categorical":  # independent dimensions: the sum of one categorical's KL per block
        sizes = [int(n) for n in (action_space or ACTION_SPACES[kind]).nvec]
        return sum(kl_divergence(Categorical(logits=old), Categorical(logits=new)) for old, new in
                   zip(torch.split(old_outputs[0], sizes, -1), torch.split(outputs[0], sizes, -1)))
    if kind == "bernoulli":
        return kl_divergence(Bernoulli(logits=old_outputs[0]), Bernoulli(logits=outputs[0])).sum(-1)
    kl = kl_divergence(distribution(kind, old_outputs), distribution(kind, outputs))
    return kl.sum(-1) if kind == "gaussian" else kl


def dense_kl_hessian(actor, kind, obs):
    """Hessian of mean KL(pi_old || pi_theta) over flat parameters, with torch.distributions' KL."""
    names = [name for name, _ in actor.named_parameters()]
    shapes = [p.shape for p in actor.parameters()]
    flat = parameters_to_vector(actor.parameters()).detach()
    with torch.no_grad():
        old = actor(obs)

    def mean_kl(weights):
        tensors = dict(zip(names, torch.split(weights, [s.numel() for s in shapes])))
        tensors = {n: t.view(s) for (n, t), s in zip(tensors.items(), shapes)}
        return reference_kl(kind, old, functional_call(actor, tensors, (obs,))).mean()

    return torch.autograd.functional.hessian(mean_kl, flat, vectorize=True)  # all rows in one vmapped pass


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["analytic", "hessian"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_fvp_matches_dense_kl_hessian(kind, method, activation):
    actor = tiny_actor(kind, activation=activation)
    assert _is_plain_mlp_actor(actor)  # "analytic" takes the cached-Jacobian MLP path, not the generic one
    assert 100 <= sum(p.numel() for p in actor.parameters()) <= 400
    # Standard normal inputs put no ReLU pre-activation at exactly 0, where its derivative is undefined.
    obs = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hessian = dense_kl_hessian(actor, kind, obs)
    product = FISHER_VECTOR_PRODUCTS[method](actor, obs)
    vectors = torch.randn(5, hessian.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for v in vectors:
        expected = hessian @ v
        got = product(v)
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-11), (got - expected).abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_fvp_is_linear_and_symmetric_positive(kind):
    actor = tiny_actor(kind, seed=3)
    obs = torch.randn(32, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    product = FISHER_VECTOR_PRODUCTS["analytic"](actor, obs)
    u, v = torch.randn(2, parameters_to_vector(actor.parameters()).numel(), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(5))
    assert torch.allclose(product(2.0 * u + v), 2.0 * product(u) + product(v), atol=1e-11)
    assert torch.isclose(u @ product(v), v @ product(u), rtol=1e-10)
    assert u @ product(u) > 0


def test_fvp_does_not_change_the_actor():
    actor = tiny_actor("gaussian", seed=6)
    before = parameters_to_vector(actor.parameters()).clone()
    obs = torch.randn(16, 5, dtype=torch.float64)
    FISHER_VECTOR_PRODUCTS["analytic"](actor, obs)(torch.ones_like(before))
    assert torch.equal(parameters_to_vector(actor.parameters()), before)


@pytest.mark.parametrize("kind", KINDS)
def test_generic_path_for_other_actors_matches_dense_hessian(kind):
    # An activation outside `mlp`'s set sends the actor down the torch.func jvp/vjp path.
    actor = tiny_actor(kind, seed=11)
    actor.net[1] = torch.nn.Softplus()
    assert not _is_plain_mlp_actor(actor)
    obs = torch.randn(40, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    hessian = dense_kl_hessian(actor, kind, obs)
    v = torch.randn(hessian.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    assert torch.allclose(FISHER_VECTOR_PRODUCTS["analytic"](actor, obs)(v), hessian @ v, rtol=1e-9, atol=1e-11)


# Policies on encoded observations (rl.observations, rl.networks.Encoder): a CNN on a channels-last image, Dicts
# of image, vector and one-hot keys, and masked categoricals, with every kind of head. Each FVP is
# checked against the dense Hessian of torch.distributions' KL, on the masked distributions computed without
# our masking (each sample's categorical restricted to its valid actions).
SMALL_CNN = {"channels": (3,), "kernels": (3,), "strides": (1,), "features": 6}
ENCODED = {
    "cnn": (gym.spaces.Box(0, 255, (6, 5, 2), np.uint8), gym.spaces.Discrete(3)),
    "cnn_multi_categorical": (gym.spaces.Box(0, 255, (6, 5, 2), np.uint8), gym.spaces.MultiDiscrete([3, 2])),
    # The channels-last input large images get (rl.networks.conv_memory_format), forced on the small image: the
    # conv weights' gradients then come out channels-last, through both FVP paths.
    "cnn_channels_last": (gym.spaces.Box(0, 255, (6, 5, 2), np.uint8), gym.spaces.Discrete(3)),
    "dict": (gym.spaces.Dict({"grid": gym.spaces.Box(0, 255, (2, 5, 5), np.uint8),
                              "position": gym.spaces.Box(-1.0, 1.0, (2,)), "direction": gym.spaces.Discrete(3)}),
             gym.spaces.Box(-1.0, 1.0, (2,))),
    "dict_categorical": (gym.spaces.Dict({"grid": gym.spaces.Box(0, 255, (2, 5, 5), np.uint8),
                                          "position": gym.spaces.Box(-1.0, 1.0, (2,))}), gym.spaces.Discrete(4)),
    "dict_bernoulli": (gym.spaces.Dict({"position": gym.spaces.Box(-1.0, 1.0, (3,)),
                                        "direction": gym.spaces.Discrete(3)}), gym.spaces.MultiBinary(3)),
    "masked_categorical": (gym.spaces.Dict({"x": gym.spaces.Box(-1.0, 1.0, (4,)),
                                            "action_mask": gym.spaces.MultiBinary(5)}), gym.spaces.Discrete(5)),
    "masked_multi_categorical": (gym.spaces.Dict({"x": gym.spaces.Box(-1.0, 1.0, (4,)),
                                                  "action_mask": gym.spaces.MultiBinary(7)}),
                                 gym.spaces.MultiDiscrete([3, 4])),
}


def encoded_actor(name, seed=0):
    observation_space, action_space = ENCODED[name]
    torch.manual_seed(seed)
    agent = Agent(observation_space, action_space, actor_hidden_sizes=(6,), critic_hidden_sizes=(4,),
                  init_log_std=-0.4, cnn=SMALL_CNN).double()
    if name == "cnn_channels_last":
        for encoder in (m for m in agent.modules() if isinstance(m, Encoder)):
            encoder.memory_formats = [torch.channels_last] * len(encoder.memory_formats)
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return agent


def encoded_batch(agent, n, seed):
    space = agent.layout.spaces if agent.layout.is_dict else None
    observation_space = gym.spaces.Dict(space) if space is not None else ENCODED["cnn"][0]
    observation_space.seed(seed)
    rng = np.random.default_rng(seed)
    observations = []
    for _ in range(n):
        o = observation_space.sample()
        if isinstance(o, dict) and "action_mask" in o:  # at least one valid value per action dimension
            blocks = agent.layout.mask.sizes
            mask = np.zeros(sum(blocks), np.int8)
            start = 0
            for size in blocks:
                mask[start:start + size] = rng.integers(0, 2, size)
                mask[start + rng.integers(size)] = 1
                start += size
            o["action_mask"] = mask
        observations.append(o)
    return torch.from_numpy(agent.layout.pack(agent.layout.stack(observations))).double()


def masked_reference_kl(agent, old_logits, logits, obs):
    """Per sample and action dimension, KL of torch's Categorical on the valid logits alone."""
    mask = agent.layout.mask
    valid = obs[:, mask.offset:mask.offset + mask.size] > 0.5
    total = []
    for i in range(obs.shape[0]):
        kl, start = 0.0, 0
        for size in mask.sizes:
            keep = valid[i, start:start + size]
            kl = kl + kl_divergence(Categorical(logits=old_logits[i, start:start + size][keep]),
                                    Categorical(logits=logits[i, start:start + size][keep]))
            start += size
        total.append(kl)
    return torch.stack(total)


def head_kind(action_space):
    return next(kind for kind, space in ACTION_SPACES.items() if type(space) is type(action_space))


def encoded_dense_hessian(agent, name, obs):
    actor = agent.actor
    names = [n for n, _ in actor.named_parameters()]
    shapes = [p.shape for p in actor.parameters()]
    flat = parameters_to_vector(actor.parameters()).detach()
    masked = name.startswith("masked")
    with torch.no_grad():
        old = actor.net(obs) if masked else actor(obs)  # masked: the raw logits, before our masking

    def mean_kl(weights):
        tensors = {n: t.view(s) for n, t, s in zip(names, torch.split(weights, [s.numel() for s in shapes]), shapes)}
        if masked:
            net_tensors = {n[len("net."):]: t for n, t in tensors.items()}
            return masked_reference_kl(agent, old[0] if isinstance(old, tuple) else old,
                                       functional_call(actor.net, net_tensors, (obs,)), obs).mean()
        action_space = ENCODED[name][1]
        return reference_kl(head_kind(action_space), old, functional_call(actor, tensors, (obs,)),
                            action_space).mean()

    return torch.autograd.functional.hessian(mean_kl, flat, vectorize=not masked)


@functools.cache
def encoded_case(name):
    """(agent, observations, dense Hessian), shared by both FVP methods (the Hessian is the slow part)."""
    agent = encoded_actor(name)
    obs = encoded_batch(agent, 24, seed=1)
    return agent, obs, encoded_dense_hessian(agent, name, obs)


@pytest.mark.parametrize("name", list(ENCODED))
@pytest.mark.parametrize("method", ["analytic", "hessian"])
def test_fvp_of_encoded_and_masked_policies_matches_dense_kl_hessian(name, method):
    agent, obs, hessian = encoded_case(name)
    # A Dict of vectors and one-hot keys alone is packed into one flat vector: an MLP, the analytic path's fast
    # one. Every other case takes the generic torch.func path.
    assert _is_plain_mlp_actor(agent.actor) == (name == "dict_bernoulli")
    assert hessian.abs().max() > 1e-3  # a real curvature, not a vanishing one
    product = FISHER_VECTOR_PRODUCTS[method](agent.actor, obs)
    vectors = torch.randn(3, hessian.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for v in vectors:
        expected = hessian @ v
        got = product(v)
        assert torch.allclose(got, expected, rtol=1e-8, atol=1e-10), (got - expected).abs().max()
