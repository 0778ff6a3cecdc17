"""Actor-critic networks: separate MLP actor and critic, Gaussian or Categorical heads."""

import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl import distributions as D
from rl.normalize import ObservationNormalizer, RewardScaler

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


class GaussianActor(nn.Module):
    """Diagonal Gaussian with a state-independent log-std. Parameters: (mean, log_std), each (B, A)."""

    def __init__(self, obs_dim, action_dim, hidden_sizes, activation, init_log_std=0.0):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, action_dim, activation, out_gain=0.01)  # the mean
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, obs):
        return self.head(self.net(obs))

    def head(self, mean):
        """Distribution parameters from the net's output."""
        return mean, self.log_std.expand_as(mean)

    sample = staticmethod(D.gaussian_sample)
    log_prob = staticmethod(D.gaussian_log_prob)
    entropy = staticmethod(D.gaussian_entropy)

    @staticmethod
    def mode(mean, log_std):
        return mean

    @staticmethod
    def kl(old_params, params):
        return D.gaussian_kl(*old_params, *params)

    @staticmethod
    def fisher_product(params, tangents):
        return D.gaussian_fisher_product(*params, *tangents)


class CategoricalActor(nn.Module):
    """Categorical over K actions. Parameters: (logits,), (B, K)."""

    def __init__(self, obs_dim, num_actions, hidden_sizes, activation):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, num_actions, activation, out_gain=0.01)  # the logits

    def forward(self, obs):
        return self.head(self.net(obs))

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

    @staticmethod
    def kl(old_params, params):
        return D.categorical_kl(*old_params, *params)

    @staticmethod
    def fisher_product(params, tangents):
        return (D.categorical_fisher_product(*params, *tangents),)


class Critic(nn.Module):
    def __init__(self, obs_dim, hidden_sizes, activation):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, 1, activation, out_gain=1.0)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class Agent(nn.Module):
    """Everything a trained policy needs: normalizer statistics, actor and critic.

    The networks see normalized observations; `obs_normalizer` turns raw ones into those.
    """

    def __init__(self, observation_space, action_space, actor_hidden_sizes=(64, 64), critic_hidden_sizes=(64, 64),
                 activation="tanh", init_log_std=0.0, normalize_observations=False, normalize_rewards=False,
                 clip_observations=10.0, clip_rewards=10.0, gamma=0.99, orthogonal_init=True):
        super().__init__()
        obs_dim = int(math.prod(observation_space.shape))
        if isinstance(action_space, gym.spaces.Box):
            action_dim = int(math.prod(action_space.shape))
            self.actor = GaussianActor(obs_dim, action_dim, actor_hidden_sizes, activation, init_log_std)
        elif isinstance(action_space, gym.spaces.Discrete):
            self.actor = CategoricalActor(obs_dim, int(action_space.n), actor_hidden_sizes, activation)
        else:
            raise ValueError(f"unsupported action space {action_space}")
        self.critic = Critic(obs_dim, critic_hidden_sizes, activation)
        if not orthogonal_init:  # PyTorch's default Linear init instead (SB3's ortho_init=False)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        self.obs_normalizer = ObservationNormalizer((obs_dim,), clip_observations, normalize_observations)
        self.reward_scaler = RewardScaler(gamma, clip_rewards, normalize_rewards)

    @torch.no_grad()
    def act(self, obs, deterministic=True):
        """Raw observations (B, obs_dim) -> actions, with the saved normalization applied."""
        params = self.actor(self.obs_normalizer(obs))
        return self.actor.mode(*params) if deterministic else self.actor.sample(*params)


def build_agent(cfg, observation_space, action_space):
    """The Agent a run config describes (its `algo` and `env` sections)."""
    algo, env = cfg.algo, cfg.env
    return Agent(observation_space, action_space,
                 actor_hidden_sizes=list(algo.actor_hidden_sizes),
                 critic_hidden_sizes=list(algo.critic_hidden_sizes), activation=algo.activation,
                 init_log_std=algo.init_log_std, normalize_observations=env.normalize_observations,
                 normalize_rewards=env.normalize_rewards, clip_observations=env.clip_observations,
                 clip_rewards=env.clip_rewards, gamma=algo.gamma, orthogonal_init=algo.orthogonal_init)


def checkpoint_size_limit(run_dir):
    """The most bytes a checkpoint of this run may take, sized from the model its .hydra/config.yaml
    describes; the checkpoint module's general limit when the folder has no readable config."""
    import os

    from omegaconf import OmegaConf

    from rl.checkpoint import DEFAULT_MAX_BYTES, size_bound
    from rl.envs import check_env_id

    path = os.path.join(run_dir, ".hydra", "config.yaml")
    try:
        config = OmegaConf.load(path)
        check_env_id(config.env.id, config.env.get("backend", "gymnasium"))
        agent = build_agent(config, *env_spaces(config))
    except Exception:  # no config, or one we cannot build a model from: the general limit applies
        return DEFAULT_MAX_BYTES
    return min(DEFAULT_MAX_BYTES, size_bound(sum(t.numel() for t in agent.state_dict().values())))


def trained_policy(state):
    """The TrainedPolicy in a loaded checkpoint; its config says how to build the agent."""
    from rl.checkpoint import config_of

    config = config_of(state)
    observation_space, action_space = env_spaces(config)
    agent = build_agent(config, observation_space, action_space)
    agent.load_state_dict(state["agent"])
    return TrainedPolicy(agent, observation_space, action_space, config, state["global_step"])


def env_spaces(config):
    """(observation space, action space) of one env of a run config, made with its backend and kwargs."""
    from omegaconf import OmegaConf

    from rl.envs import make_vector_env

    envs = make_vector_env(config.env.id, 1, backend=config.env.get("backend", "gymnasium"),
                           **OmegaConf.to_container(config.env.kwargs))
    try:
        return envs.single_observation_space, envs.single_action_space
    finally:
        envs.close()


class TrainedPolicy:
    """A trained policy for use outside training: NumPy observations in, env-ready actions out."""

    def __init__(self, agent, observation_space, action_space, config, global_step=None):
        self.agent = agent.eval()
        self.observation_shape = tuple(observation_space.shape)
        self.action_space = action_space
        self.config = config  # the run's config
        self.global_step = global_step  # the training step the weights come from

    def act(self, obs, deterministic=True):
        """Action(s) for one observation (obs_dim,) or a batch (B, obs_dim); Box actions clipped to bounds."""
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.shape == self.observation_shape
        batch = torch.from_numpy(obs.reshape(1 if single else obs.shape[0], -1))
        action = self.agent.act(batch, deterministic).numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return action[0] if single else action
