"""Collecting rollouts from vector envs, and GAE(lambda)."""

from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl import distributed
from rl.envs import final_observations
from rl.guards import check_env_output
from rl.networks import plain_mlp
from rl.policy import GaussianActor, actor_critic_outputs


@dataclass
class Rollout:
    """T steps from N envs. Every tensor is (T, N, ...) on one device."""

    obs: torch.Tensor  # (T, N, D) packed (rl.observations), normalized observations the policy acted on
    actions: torch.Tensor  # (T, N, A) unclipped Gaussian samples, (T, N) discrete or (T, N, D) multi-discrete/binary
    log_probs: torch.Tensor  # (T, N) log pi_old(a|s)
    values: torch.Tensor  # (T, N) V(s)
    rewards: torch.Tensor  # (T, N) rewards after scaling
    next_values: torch.Tensor  # (T, N) V(s') of the true next state (the final obs when an episode ended)
    terminated: torch.Tensor  # (T, N) bool: s' is terminal, do not bootstrap
    done: torch.Tensor  # (T, N) bool: terminated or truncated, the episode stops here
    # Recurrent policies (rl.memory) only, else None:
    starts: torch.Tensor = None  # (T, N) float: 1 where step t's observation begins an episode
    actor_states: torch.Tensor = None  # (T, N, S) the actor core's state before step t (before its reset)
    critic_states: torch.Tensor = None  # (T, N, S) the critic core's

    def to(self, device):
        # Non-blocking copies out of pinned memory: safe because every update ends in a host read of its
        # metrics (a sync) before the next rollout writes into the same pinned buffers.
        return Rollout(**{f.name: None if getattr(self, f.name) is None else
                          getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


def _acting_function(actor):
    """obs (N, obs_dim) -> sampled actions, with as little per-call overhead as the actor allows.

    For our MLP actors the layers are applied with raw torch ops on weights taken once per rollout,
    skipping nn.Module dispatch; the math is the actor's own forward and sample.
    """
    structure = plain_mlp(getattr(actor, "net", None))
    if structure is None:
        return lambda obs: actor.sample(*actor(obs))
    linears, activations = structure
    weights = [(m.bias, m.weight.T) for m in linears]
    functions = [{nn.Tanh: torch.tanh, nn.ReLU: torch.relu}.get(type(m), m) for m in activations]
    if isinstance(actor, GaussianActor):  # the std is fixed for the rollout: exp(log_std) once, not per step
        std = actor.log_std.exp()

        def sample(mean):
            return torch.addcmul(mean, std, torch.randn_like(mean))
    else:
        def sample(output):
            return actor.sample(*actor.head(output))

    def act(obs):
        h = obs
        for (bias, weight_t), activation in zip(weights[:-1], functions):
            h = activation(torch.addmm(bias, h, weight_t))
        bias, weight_t = weights[-1]
        return sample(torch.addmm(bias, h, weight_t))

    return act


def gae(rewards, values, next_values, terminated, done, gamma, gae_lambda):
    """Generalized advantage estimation (Schulman et al. 2016) over (T, N) tensors.

    `terminated` removes the bootstrap term; `done` (terminated or truncated) stops the recursion.
    Returns (advantages, returns), each (T, N).
    """
    deltas = rewards + gamma * next_values * (~terminated) - values
    decay = gamma * gae_lambda * (~done).to(rewards.dtype)
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + decay[t] * running
        advantages[t] = running
    return advantages, advantages + values


class Collector:
    """Steps a vector env with an agent on the CPU and fills fixed-shape rollout buffers.

    It owns everything that carries over between rollouts: the current observations, the running
    discounted returns for reward scaling, and the episode counters.
    """

    def __init__(self, envs, agent, num_steps, device, seed, env_episodes=False):
        """`env_episodes`: the finished episodes are those the envs report in info["episode"] (Atari's whole
        games, whose lives are episodes for learning) rather than the ones counted here."""
        self.envs, self.agent, self.num_steps, self.device = envs, agent, num_steps, torch.device(device)
        self.env_episodes = env_episodes
        num_envs = envs.num_envs
        self.layout = agent.layout  # observations are packed into it as they leave the envs
        obs_dim = self.layout.dim
        action_space = envs.single_action_space
        # Box actions are float samples, clipped for the env; every other kind is integers (Discrete (N,),
        # MultiDiscrete and MultiBinary (N, D)).
        box = isinstance(action_space, gym.spaces.Box)
        self.action_low = action_space.low if box else None
        self.action_high = action_space.high if box else None
        action_shape = () if isinstance(action_space, gym.spaces.Discrete) else action_space.shape
        action_dtype = torch.float32 if box else torch.int64

        shape = (num_steps, num_envs)
        pin = self.device.type == "cuda"
        self.buffer = Rollout(
            obs=torch.zeros(*shape, obs_dim, pin_memory=pin),
            actions=torch.zeros(*shape, *action_shape, dtype=action_dtype, pin_memory=pin),
            log_probs=torch.zeros(shape, pin_memory=pin),
            values=torch.zeros(shape, pin_memory=pin),
            rewards=torch.zeros(shape, pin_memory=pin),
            next_values=torch.zeros(shape, pin_memory=pin),
            terminated=torch.zeros(shape, dtype=torch.bool, pin_memory=pin),
            done=torch.zeros(shape, dtype=torch.bool, pin_memory=pin),
        )
        self.recurrent = agent.recurrent
        if self.recurrent:  # the cores' states carried between steps and rollouts, and where episodes begin
            self.buffer.starts = torch.zeros(shape, pin_memory=pin)
            self.buffer.actor_states = torch.zeros(*shape, agent.actor.net.state_size, pin_memory=pin)
            self.buffer.critic_states = torch.zeros(*shape, agent.critic.net.state_size, pin_memory=pin)
            self.actor_state, self.critic_state = agent.initial_state(num_envs)
            self.next_starts = np.ones(num_envs, dtype=np.float32)  # the reset's observations begin episodes
        self.bootstrap = torch.zeros(shape, dtype=torch.bool)  # truncated and not terminated
        self.final_values = torch.zeros(shape)
        # NumPy views of the CPU buffers: the per-step writes below are much cheaper through them.
        self.view = {name: getattr(self.buffer, name).numpy() for name in ("obs", "actions", "rewards", "terminated",
                                                                              "done")}
        self.view["bootstrap"] = self.bootstrap.numpy()

        # Normalizer statistics as of the last merge across ranks (see merge_running_stats).
        self.merged = [self._snapshot(stats) for stats in self._running_stats()]
        self.env_indices = np.arange(num_envs)
        obs, info = envs.reset(seed=seed)
        self.obs = self.layout.pack(obs, info)
        check_env_output("observation", self.obs, 0, self.env_indices)
        self.discounted_return = np.zeros(num_envs)
        self.episode_return = np.zeros(num_envs)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)

    @torch.no_grad()
    def collect(self, global_step=0):
        """Run `num_steps` steps in every env. Returns (Rollout on the learner's device, finished episodes).

        Finished episodes are a list of (return, length) with raw, unscaled rewards. Per step only the
        action is computed; values and log-probabilities come afterwards in one batched pass (the policy
        does not change during a rollout). A NaN or inf observation or reward stops the rollout with a
        NonFiniteError naming the sub-env and the global step (counted from `global_step`).
        """
        agent, actor, buf, view = self.agent, self.agent.actor, self.buffer, self.view
        normalizer = agent.obs_normalizer
        num_envs = self.envs.num_envs
        act = _acting_function(actor) if not self.recurrent else None
        episodes, pending_finals = [], []
        self.final_values.zero_()
        start_states = (self.actor_state, self.critic_state) if self.recurrent else None  # the cores' at step 0
        for t in range(self.num_steps):
            view["obs"][t] = normalizer.update_and_normalize(self.obs)
            if self.recurrent:
                buf.starts[t] = torch.from_numpy(self.next_starts)
                outputs, self.actor_state = actor.net.step(buf.obs[t], self.actor_state * (1 - buf.starts[t, :, None]))
                action = actor.sample(*actor.params_from(buf.obs[t], outputs))
            else:
                action = act(buf.obs[t])
            view["actions"][t] = env_action = action.numpy()
            if self.action_low is not None:  # the env gets a clipped action; the buffer keeps the sample
                env_action = np.minimum(np.maximum(env_action, self.action_low), self.action_high)
            next_obs, reward, terminated, truncated, info = self.envs.step(env_action)
            next_obs = self.layout.pack(next_obs, info)
            check_env_output("observation", next_obs, global_step + t * num_envs, self.env_indices)
            check_env_output("reward", reward, global_step + t * num_envs, self.env_indices)
            done = terminated | truncated

            self.episode_return += reward
            self.episode_length += 1
            if done.any():
                if self.env_episodes:
                    episodes += reported_episodes(info)
                else:
                    episodes += [(float(self.episode_return[i]), int(self.episode_length[i]))
                                 for i in np.flatnonzero(done)]
                self.episode_return[done] = 0.0
                self.episode_length[done] = 0
                bootstrap = np.flatnonzero(truncated & ~terminated)
                if bootstrap.size:  # value of the real last state, not of the reset one
                    final = self.layout.pack(final_observations(self.layout, info, bootstrap))
                    check_env_output("final observation", final, global_step + t * num_envs, bootstrap)
                    final = normalizer.normalize_numpy(final)
                    if self.recurrent:  # valued after the rollout, from the state its episode ended in
                        pending_finals.append((t, bootstrap, torch.from_numpy(final)))
                    else:
                        self.final_values[t, bootstrap] = agent.critic(torch.from_numpy(final))

            view["rewards"][t] = agent.reward_scaler(reward, self.discounted_return, done)
            view["terminated"][t] = terminated
            view["done"][t] = done
            view["bootstrap"][t] = truncated & ~terminated
            self.obs = next_obs
            if self.recurrent:
                self.next_starts = done.astype(np.float32)

        # Over several ranks, every rank's new observations and returns join one set of statistics.
        self.merged = [distributed.merge_running_stats(stats, merged)
                       for stats, merged in zip(self._running_stats(), self.merged)]
        flat_obs = buf.obs.flatten(0, 1)
        if self.recurrent:
            last_value = self._recurrent_values(flat_obs, *start_states, pending_finals)
        else:
            params, values = actor_critic_outputs(actor, agent.critic, flat_obs)
            buf.values.copy_(values.view_as(buf.values))
            buf.log_probs.copy_(actor.log_prob(*params, buf.actions.flatten(0, 1)).view_as(buf.log_probs))
            last_value = agent.critic(torch.from_numpy(normalizer.normalize_numpy(self.obs)))
        buf.next_values[:-1] = buf.values[1:]
        buf.next_values[-1] = last_value
        torch.where(self.bootstrap, self.final_values, buf.next_values, out=buf.next_values)
        rollout = buf if self.device.type == "cpu" else buf.to(self.device)
        return rollout, episodes

    def _recurrent_values(self, flat_obs, actor_state, critic_state, pending_finals):
        """A recurrent rollout's log-probs and values, unrolled over the whole rollout from the states it began
        with (the same steps acting took); the cores' states before every step into the buffer; the values of
        truncated episodes' final observations from the state each episode ended in. Returns V(next obs)."""
        agent, actor, buf = self.agent, self.agent.actor, self.buffer
        outputs, actor_after = actor.net(flat_obs, actor_state, buf.starts, every_state=True)
        buf.log_probs.copy_(actor.log_prob(*actor.params_from(flat_obs, outputs),
                                           buf.actions.flatten(0, 1)).view_as(buf.log_probs))
        values, critic_after = agent.critic.net(flat_obs, critic_state, buf.starts, every_state=True)
        buf.values.copy_(values.view_as(buf.values))
        buf.actor_states.copy_(torch.cat([actor_state[None], actor_after[:-1]]))
        buf.critic_states.copy_(torch.cat([critic_state[None], critic_after[:-1]]))
        for t, envs, final in pending_finals:
            self.final_values[t, envs] = agent.critic.net.step(final, critic_after[t, envs])[0].squeeze(-1)
        self.critic_state = critic_after[-1]
        next_obs = torch.from_numpy(agent.obs_normalizer.normalize_numpy(self.obs))
        keep = 1 - torch.from_numpy(self.next_starts)[:, None]
        return agent.critic.net.step(next_obs, self.critic_state * keep)[0].squeeze(-1)

    def _running_stats(self):
        return self.agent.obs_normalizer.stats, self.agent.reward_scaler.stats

    @staticmethod
    def _snapshot(stats):
        return stats.count.clone(), stats.mean.clone(), stats.var.clone()

    def restart_episodes(self, seed):
        """Start fresh episodes in every env (for a resume where env state could not be saved)."""
        self.merged = [self._snapshot(stats) for stats in self._running_stats()]  # checkpoints follow a merge
        obs, info = self.envs.reset(seed=seed)
        self.obs = self.layout.pack(obs, info)
        self.discounted_return[:] = 0.0
        self.episode_return[:] = 0.0
        self.episode_length[:] = 0
        if self.recurrent:
            self.actor_state, self.critic_state = self.agent.initial_state(self.envs.num_envs)
            self.next_starts[:] = 1.0

    def state_dict(self):
        # Tensors, not arrays: checkpoints are read back with weights_only=True.
        state = {
            "obs": torch.from_numpy(self.obs.copy()),
            "discounted_return": torch.from_numpy(self.discounted_return.copy()),
            "episode_return": torch.from_numpy(self.episode_return.copy()),
            "episode_length": torch.from_numpy(self.episode_length.copy()),
        }
        if self.recurrent:  # every sub-env's live core states, so a resume acts as the run would have
            state.update(actor_state=self.actor_state.clone(), critic_state=self.critic_state.clone(),
                         next_starts=torch.from_numpy(self.next_starts.copy()))
        return state

    def load_state_dict(self, state):
        self.merged = [self._snapshot(stats) for stats in self._running_stats()]  # checkpoints follow a merge
        self.obs = state["obs"].numpy().copy()
        self.discounted_return = state["discounted_return"].numpy().copy()
        self.episode_return = state["episode_return"].numpy().copy()
        self.episode_length = state["episode_length"].numpy().copy()
        if self.recurrent:
            self.actor_state, self.critic_state = state["actor_state"].clone(), state["critic_state"].clone()
            self.next_starts = state["next_starts"].numpy().copy()


def reported_episodes(info):
    """(return, length) of the episodes a vector env's RecordEpisodeStatistics reports as ended this step."""
    final = info.get("final_info", {})
    if "episode" not in final:
        return []
    ended = np.flatnonzero(final["_episode"])
    return [(float(final["episode"]["r"][i]), int(final["episode"]["l"][i])) for i in ended]


@dataclass
class Batch:
    """A rollout flattened to B = T * N samples (row t * N + e), with its advantages and returns.

    For a recurrent policy the rows are L x M sequences, row k * M + m being step k of sequence m (the whole
    rollout: L = T, M = N), with each row's episode-start flag and the cores' states before it; `memory`
    gives what the actor and critic are called with besides the observations.
    """

    obs: torch.Tensor  # (B, obs_dim)
    actions: torch.Tensor  # (B, A) or (B,)
    log_probs: torch.Tensor  # (B,)
    values: torch.Tensor  # (B,)
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)
    num_envs: int = 1  # N: this rank's envs
    starts: torch.Tensor = None  # (B,) recurrent only: 1 where the row's observation begins an episode
    actor_states: torch.Tensor = None  # (B, S) the actor core's state before the row's step
    critic_states: torch.Tensor = None  # (B, S) the critic core's
    sequence_length: int = 1  # L

    def __len__(self):
        return self.obs.shape[0]

    def _tensors(self):
        return [f.name for f in fields(self) if f.name not in ("num_envs", "sequence_length")
                and getattr(self, f.name) is not None]

    def index(self, indices, sequence_length=1):
        return Batch(**{name: getattr(self, name)[indices] for name in self._tensors()}, num_envs=self.num_envs,
                     sequence_length=sequence_length)

    def memory(self, kind):
        """(state before each sequence (M, S), starts (L, M)) for kind "actor" or "critic"; () feed-forward."""
        if self.starts is None:
            return ()
        sequences = len(self) // self.sequence_length
        return getattr(self, f"{kind}_states")[:sequences], self.starts.view(self.sequence_length, sequences)

    def sequence_minibatches(self, count, length, generator):
        """`count` minibatches of whole chunks of `length` steps (a recurrent policy's): each env's rollout is
        cut into chunks, their order shuffled per env, and minibatch i takes the i-th slice of every env's
        order (as minibatch_indices does with steps, so the ranks' shards are one process's minibatch)."""
        num_steps = len(self) // self.num_envs
        chunks = num_steps // length
        all_envs = self.num_envs * distributed.world_size()
        first = self.num_envs * distributed.rank()
        device = self.obs.device
        orders = torch.stack([torch.randperm(chunks, device=device, generator=generator) for _ in range(all_envs)], 1)
        per = chunks // count
        chosen = orders[:per * count, first:first + self.num_envs] * length  # first step of each chunk
        envs = torch.arange(self.num_envs, device=device)
        steps = torch.arange(length, device=device)[:, None, None]
        minibatches = []
        for i in range(count):
            rows = (chosen[i * per:(i + 1) * per] + steps) * self.num_envs + envs  # (L, per, N)
            minibatches.append(self.index(rows.reshape(-1), sequence_length=length))
        return minibatches

    def minibatches(self, count, generator):
        """`count` shuffled minibatches (see minibatch_indices): one gather, then slices (views)."""
        indices = minibatch_indices(len(self) // self.num_envs, self.num_envs, count, generator, self.obs.device)
        shuffled = self.index(indices.reshape(-1))
        size = indices.shape[1]
        return [Batch(**{name: getattr(shuffled, name)[i * size:(i + 1) * size] for name in self._tensors()},
                      num_envs=self.num_envs) for i in range(count)]


def minibatch_indices(num_steps, num_envs, count, generator, device):
    """Rows of `count` minibatches of a (num_steps x num_envs) batch -> (count, num_steps // count * num_envs).

    Each env's time steps are shuffled on their own and minibatch i takes the i-th slice of every env's
    order, so every minibatch holds the same number of steps of each env. Every rank draws the orders of
    all the run's envs from the shared generator and keeps its own envs' columns: the union of the ranks'
    minibatch i is the minibatch i one process holding all envs would draw, in equal shards. With one env,
    this is a plain shuffle of the batch.
    """
    all_envs = num_envs * distributed.world_size()
    first = num_envs * distributed.rank()
    orders = torch.stack([torch.randperm(num_steps, device=device, generator=generator) for _ in range(all_envs)], 1)
    chunk = num_steps // count
    steps = orders[:chunk * count, first:first + num_envs]  # (count * chunk, num_envs)
    rows = steps * num_envs + torch.arange(num_envs, device=device)
    return rows.view(count, chunk * num_envs)


def flatten(rollout, advantages, returns):
    def flat(x):
        return None if x is None else x.reshape(-1, *x.shape[2:])

    return Batch(flat(rollout.obs), flat(rollout.actions), flat(rollout.log_probs), flat(rollout.values),
                 flat(advantages), flat(returns), num_envs=rollout.rewards.shape[1], starts=flat(rollout.starts),
                 actor_states=flat(rollout.actor_states), critic_states=flat(rollout.critic_states),
                 sequence_length=rollout.rewards.shape[0])


def explained_variance(predicted, target):
    """1 - Var[target - predicted] / Var[target] over all ranks' samples; NaN when the target is constant."""
    if distributed.world_size() > 1:
        return torch.tensor(distributed.explained_variance(predicted, target))
    var = target.var()
    return torch.where(var > 0, 1 - (target - predicted).var() / var, torch.full_like(var, float("nan")))
