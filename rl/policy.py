"""Actor-critic networks: separate MLP actor and critic, Gaussian or Categorical heads."""

import math

import gymnasium as gym
import torch
from torch import nn

from rl import distributions as D
from rl.networks import mlp
from rl.normalize import ObservationNormalizer, RewardScaler


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

    kl = _on_parameter_tuples(D.gaussian_kl)
    fisher_product = _on_parameter_tuples(D.gaussian_fisher_product)


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

    kl = _on_parameter_tuples(D.categorical_kl)
    fisher_product = _on_parameter_tuples(D.categorical_fisher_product, wrap=True)


class MultiCategoricalActor(nn.Module):
    """Independent categoricals, one per dimension of a MultiDiscrete action. Parameters: (logits,),
    (B, sum(sizes)), a block of sizes[d] logits for dimension d."""

    def __init__(self, obs_dim, sizes, hidden_sizes, activation):
        super().__init__()
        self.sizes = tuple(int(k) for k in sizes)
        self.net = mlp(obs_dim, hidden_sizes, sum(self.sizes), activation, out_gain=0.01)

    forward, head = CategoricalActor.forward, staticmethod(CategoricalActor.head)  # logits, as a categorical's

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

    def __init__(self, obs_dim, num_bits, hidden_sizes, activation):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, num_bits, activation, out_gain=0.01)

    forward, head = CategoricalActor.forward, staticmethod(CategoricalActor.head)  # logits, as a categorical's
    sample = staticmethod(D.bernoulli_sample)
    log_prob = staticmethod(D.bernoulli_log_prob)
    entropy = staticmethod(D.bernoulli_entropy)
    mode = staticmethod(D.bernoulli_mode)

    kl = _on_parameter_tuples(D.bernoulli_kl)
    fisher_product = _on_parameter_tuples(D.bernoulli_fisher_product, wrap=True)


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
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.actor = MultiCategoricalActor(obs_dim, action_space.nvec, actor_hidden_sizes, activation)
        elif isinstance(action_space, gym.spaces.MultiBinary):
            self.actor = BernoulliActor(obs_dim, int(math.prod(action_space.shape)), actor_hidden_sizes, activation)
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


def sync_acting_copy(agent, acting_agent):
    """After an update on a GPU learner: normalizer statistics move from the CPU acting copy (which saw the
    observations) to the learner, network weights the other way."""
    agent.obs_normalizer.load_state_dict(acting_agent.obs_normalizer.state_dict())
    agent.reward_scaler.load_state_dict(acting_agent.reward_scaler.state_dict())
    acting_agent.load_state_dict(agent.state_dict())
