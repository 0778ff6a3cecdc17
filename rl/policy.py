"""Actor and critic assembled from encoders (rl.networks) and heads (rl.distributions): separate networks,
one head per action space, the action mask applied to the logits it covers."""

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl import distributions as D
from rl.memory import RecurrentNet
from rl.networks import Encoder, encoded_mlp, shared_encoder
from rl.normalize import ObservationNormalizer, RewardScaler
from rl.observations import ObservationLayout


def _on_parameter_tuples(closed_form, wrap=False):
    """A head's `kl(old_params, params)` or `fisher_product(params, tangents)` from a closed form of
    rl.distributions taking the parameters one by one; `wrap`: the closed form returns one tensor, the head a
    tuple of them."""
    def method(first, second):
        result = closed_form(*first, *second)
        return (result,) if wrap else result

    return staticmethod(method)


class GaussianActor(nn.Module):
    """Diagonal Gaussian with a state-independent log-std. Parameters: (mean, log_std), each (B, A)."""

    def __init__(self, network, action_dim, init_log_std=0.0):
        super().__init__()
        self.net = network(action_dim, out_gain=0.01)  # the mean
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, obs, *memory):
        """`memory`: a recurrent net's (state, starts) (rl.memory.RecurrentNet); none for a feed-forward one."""
        return self.params_from(obs, self.net(obs, *memory))

    def params_from(self, obs, outputs):
        """Distribution parameters from the net's outputs for these observations."""
        return self.head(outputs)

    def head(self, mean):
        """Distribution parameters from the net's output."""
        return mean, self.log_std.expand_as(mean)

    sample = staticmethod(D.gaussian_sample)
    log_prob = staticmethod(D.gaussian_log_prob)
    entropy = staticmethod(D.gaussian_entropy)

    @staticmethod
    def mode(mean, log_std):
        return mean

    kl = _on_parameter_tuples(D.gaussian_kl)
    fisher_product = _on_parameter_tuples(D.gaussian_fisher_product)


class CategoricalActor(nn.Module):
    """Categorical over K actions. Parameters: (logits,), (B, K)."""

    def __init__(self, network, num_actions, mask=None):
        super().__init__()
        self.net = network(num_actions, out_gain=0.01)  # the logits
        self.mask = mask  # (first, end) of the mask's features in the packed observation, or None

    def forward(self, obs, *memory):
        return self.params_from(obs, self.net(obs, *memory))

    def params_from(self, obs, logits):
        """Distribution parameters from the net's logits, the observations' action mask applied."""
        if self.mask is not None:
            logits = D.masked_logits(logits, obs[:, self.mask[0]:self.mask[1]])
        return self.head(logits)

    @staticmethod
    def head(logits):
        """Distribution parameters from the net's output."""
        return (logits,)

    sample = staticmethod(D.categorical_sample)
    log_prob = staticmethod(D.categorical_log_prob)
    entropy = staticmethod(D.categorical_entropy)

    @staticmethod
    def mode(logits):
        return logits.argmax(-1)

    kl = _on_parameter_tuples(D.categorical_kl)
    fisher_product = _on_parameter_tuples(D.categorical_fisher_product, wrap=True)


class MultiCategoricalActor(nn.Module):
    """Independent categoricals, one per dimension of a MultiDiscrete action. Parameters: (logits,),
    (B, sum(sizes)), a block of sizes[d] logits for dimension d."""

    def __init__(self, network, sizes, mask=None):
        super().__init__()
        self.sizes = tuple(int(k) for k in sizes)
        self.net = network(sum(self.sizes), out_gain=0.01)
        self.mask = mask  # as CategoricalActor's, over all the blocks' logits

    forward, params_from = CategoricalActor.forward, CategoricalActor.params_from  # logits, as a categorical's
    head = staticmethod(CategoricalActor.head)

    def sample(self, logits):
        return D.multi_categorical_sample(logits, self.sizes)

    def log_prob(self, logits, action):
        return D.multi_categorical_log_prob(logits, action, self.sizes)

    def entropy(self, logits):
        return D.multi_categorical_entropy(logits, self.sizes)

    def mode(self, logits):
        return D.multi_categorical_mode(logits, self.sizes)

    def kl(self, old_params, params):
        return D.multi_categorical_kl(*old_params, *params, self.sizes)

    def fisher_product(self, params, tangents):
        return (D.multi_categorical_fisher_product(*params, *tangents, self.sizes),)


class BernoulliActor(nn.Module):
    """Independent Bernoullis, one per bit of a MultiBinary action. Parameters: (logits,), (B, N)."""

    def __init__(self, network, num_bits):
        super().__init__()
        self.net = network(num_bits, out_gain=0.01)
        self.mask = None

    forward, params_from = CategoricalActor.forward, CategoricalActor.params_from  # logits, as a categorical's
    head = staticmethod(CategoricalActor.head)
    sample = staticmethod(D.bernoulli_sample)
    log_prob = staticmethod(D.bernoulli_log_prob)
    entropy = staticmethod(D.bernoulli_entropy)
    mode = staticmethod(D.bernoulli_mode)

    kl = _on_parameter_tuples(D.bernoulli_kl)
    fisher_product = _on_parameter_tuples(D.bernoulli_fisher_product, wrap=True)


class Critic(nn.Module):
    def __init__(self, network):
        super().__init__()
        self.net = network(1, out_gain=1.0)

    def forward(self, obs, *memory):
        return self.net(obs, *memory).squeeze(-1)


CNN_DEFAULTS = {"channels": (32, 64, 64), "kernels": (8, 4, 3), "strides": (4, 2, 1), "features": 512}  # Nature


class Agent(nn.Module):
    """Everything a trained policy needs: normalizer statistics, actor and critic.

    The networks see packed (`layout`), normalized observations; `obs_normalizer` turns packed raw ones into
    those. Only vector pieces are normalized: pixels, one-hots and masks pass through.
    """

    def __init__(self, observation_space, action_space, actor_hidden_sizes=(64, 64), critic_hidden_sizes=(64, 64),
                 activation="tanh", init_log_std=0.0, normalize_observations=False, normalize_rewards=False,
                 clip_observations=10.0, clip_rewards=10.0, gamma=0.99, orthogonal_init=True, image_keys=None,
                 action_mask="auto", cnn=None, memory=None, share_encoder=False):
        super().__init__()
        self.layout = ObservationLayout(observation_space, image_keys, action_mask, mask_blocks(action_space))
        cnn = {**CNN_DEFAULTS, **(cnn or {})}
        mask = self.layout.mask
        mask = None if mask is None else (mask.offset, mask.offset + mask.size)
        self.recurrent = memory is not None  # memory: {"kind": "gru" | "lstm", "size": units}
        # PPO may give actor and critic one encoder (CNNs computed once for both); TRPO's actor-only steps cannot.
        encoder = Encoder(self.layout, cnn) if share_encoder else None

        def network(hidden_sizes, out_dim, out_gain):
            if self.recurrent:
                return RecurrentNet(self.layout, cnn, memory["kind"], memory["size"], hidden_sizes, out_dim,
                                    activation, out_gain)
            return encoded_mlp(self.layout, cnn, hidden_sizes, out_dim, activation, out_gain, encoder)

        def actor_network(out_dim, out_gain):
            return network(actor_hidden_sizes, out_dim, out_gain)

        if isinstance(action_space, gym.spaces.Box):
            action_dim = int(math.prod(action_space.shape))
            self.actor = GaussianActor(actor_network, action_dim, init_log_std)
        elif isinstance(action_space, gym.spaces.Discrete):
            self.actor = CategoricalActor(actor_network, int(action_space.n), mask)
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.actor = MultiCategoricalActor(actor_network, action_space.nvec, mask)
        elif isinstance(action_space, gym.spaces.MultiBinary):
            self.actor = BernoulliActor(actor_network, int(math.prod(action_space.shape)))
        else:
            raise ValueError(f"unsupported action space {action_space}")
        self.critic = Critic(lambda out_dim, out_gain: network(critic_hidden_sizes, out_dim, out_gain))
        if not orthogonal_init:  # PyTorch's default init instead (SB3's ortho_init=False)
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    module.reset_parameters()
        features = self.layout.normalized_features()
        self.obs_normalizer = ObservationNormalizer((self.layout.dim if features is None else len(features),),
                                                    clip_observations, normalize_observations, features)
        self.reward_scaler = RewardScaler(gamma, clip_rewards, normalize_rewards)

    @torch.no_grad()
    def act(self, obs, deterministic=True, state=None):
        """Packed raw observations (B, D) -> actions, with the saved normalization applied. A recurrent agent
        takes its actor core's state (B, S) before this step and returns (actions, the state after it)."""
        obs = self.obs_normalizer(obs)
        if self.recurrent:
            outputs, state = self.actor.net.step(obs, state)
            params = self.actor.params_from(obs, outputs)
        else:
            params = self.actor(obs)
        action = self.actor.mode(*params) if deterministic else self.actor.sample(*params)
        return (action, state) if self.recurrent else action

    def initial_state(self, batch, dtype=torch.float32):
        """Zero states (batch, S) of the actor's and the critic's cores, where an episode begins."""
        return (torch.zeros(batch, self.actor.net.state_size, dtype=dtype),
                torch.zeros(batch, self.critic.net.state_size, dtype=dtype))


def actor_critic_outputs(actor, critic, obs, actor_memory=(), critic_memory=()):
    """(distribution parameters, values) for the same observations: a shared encoder (algo.share_encoder) runs
    once for both heads; a recurrent actor and critic take their (states, starts)."""
    encoder = shared_encoder(actor, critic)
    if encoder is None:
        return actor(obs, *actor_memory), critic(obs, *critic_memory)
    features = encoder(obs)
    return actor.params_from(obs, actor.net[1](features)), critic.net[1](features).squeeze(-1)


def mask_blocks(action_space):
    """The logits an action mask covers, per action dimension: a Discrete's (n,), a MultiDiscrete's nvec;
    None for the spaces a mask cannot apply to."""
    if isinstance(action_space, gym.spaces.Discrete):
        return (int(action_space.n),)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return tuple(int(n) for n in np.asarray(action_space.nvec).reshape(-1))
    return None


def build_agent(cfg, observation_space, action_space):
    """The Agent a run config describes (its `algo` and `env` sections)."""
    algo, env = cfg.algo, cfg.env
    image_keys = env.get("image_keys", "auto")
    return Agent(observation_space, action_space,
                 actor_hidden_sizes=list(algo.actor_hidden_sizes),
                 critic_hidden_sizes=list(algo.critic_hidden_sizes), activation=algo.activation,
                 init_log_std=algo.init_log_std, normalize_observations=env.normalize_observations,
                 normalize_rewards=env.normalize_rewards, clip_observations=env.clip_observations,
                 clip_rewards=env.clip_rewards, gamma=algo.gamma, orthogonal_init=algo.orthogonal_init,
                 image_keys=None if image_keys == "auto" else list(image_keys),
                 action_mask=env.get("action_mask", "auto"), cnn=cnn_options(env),
                 memory=None if algo.get("memory", "none") == "none" else {"kind": algo.memory,
                                                                           "size": algo.memory_size},
                 share_encoder=algo.get("share_encoder", False))


def cnn_options(env):
    """The CNN an env config asks for (its `cnn_*` keys; runs from before them get Nature-CNN)."""
    return {key: (list(env[f"cnn_{key}"]) if key != "features" else env[f"cnn_{key}"])
            for key in CNN_DEFAULTS if f"cnn_{key}" in env}


def sync_acting_copy(agent, acting_agent):
    """After an update on a GPU learner: normalizer statistics move from the CPU acting copy (which saw the
    observations) to the learner, network weights the other way."""
    agent.obs_normalizer.load_state_dict(acting_agent.obs_normalizer.state_dict())
    agent.reward_scaler.load_state_dict(acting_agent.reward_scaler.state_dict())
    acting_agent.load_state_dict(agent.state_dict())
