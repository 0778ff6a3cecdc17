"""A trained policy outside training: `rl.load(run)`, TrainedPolicy, and how big a run's checkpoint can be.

Nothing here makes an env: the observation and action spaces come from the checkpoint (format 5) or the run
folder's spaces.json, so a policy whose env cannot be made here still loads and acts on observations.
"""

import json
import os

import gymnasium as gym
import numpy as np
import torch

from rl import checkpoint
from rl.observations import MASK_KEY
from rl.policy import build_agent
from rl.spaces import SpaceError, space_from_state, space_to_state

SPACES_FILE = "spaces.json"  # in the run folder: what the run's networks are sized by
SPACES_MAX_BYTES = 16 << 20


def load(run_dir, path=None, which="latest"):
    """The TrainedPolicy of a run's checkpoint (`latest`, `best` or a global step), or of the file `path`."""
    path = path or checkpoint.resolve(run_dir, which)
    return trained_policy(checkpoint.load(path, checkpoint_size_limit(run_dir) if run_dir else
                                          checkpoint.DEFAULT_MAX_BYTES))


def spaces_state(observation_space, action_space):
    return {"observation": space_to_state(observation_space), "action": space_to_state(action_space)}


def write_spaces(run_dir, observation_space, action_space):
    from rl.files import write_json

    write_json(os.path.join(run_dir, SPACES_FILE), spaces_state(observation_space, action_space))


def read_spaces(run_dir):
    """(observation space, action space) from the run folder's spaces.json, or None when it has none."""
    path = os.path.join(run_dir, SPACES_FILE)
    try:
        with checkpoint.open_regular(path, SPACES_MAX_BYTES, "spaces.json") as f:
            return _spaces(json.loads(f.read()))
    except (checkpoint.CheckpointError, ValueError, TypeError, KeyError):
        return None


def _spaces(state):
    return space_from_state(state["observation"]), space_from_state(state["action"])


def checkpoint_size_limit(run_dir):
    """The most bytes a checkpoint of this run may take, sized from the model its .hydra/config.yaml and
    spaces.json describe; the general limit when the folder lacks either (runs made before spaces.json)."""
    from omegaconf import OmegaConf

    spaces = read_spaces(run_dir)
    try:
        agent = build_agent(OmegaConf.load(os.path.join(run_dir, ".hydra", "config.yaml")), *spaces)
    except Exception:  # no config, no spaces, or nothing we can build a model from: the general limit applies
        return checkpoint.DEFAULT_MAX_BYTES
    return min(checkpoint.DEFAULT_MAX_BYTES, checkpoint.size_bound(sum(t.numel() for t in agent.state_dict().values())))


def trained_policy(state):
    """The TrainedPolicy in a loaded checkpoint; its config says how to build the agent, its spaces what for."""
    config = checkpoint.config_of(state)
    try:
        spaces = _spaces(state["spaces"]) if "spaces" in state else _spaces_of_env(config)
    except SpaceError as error:
        raise checkpoint.CheckpointError(f"the checkpoint's spaces: {error}") from None
    agent = build_agent(config, *spaces)
    try:
        agent.load_state_dict(state["agent"])
    except Exception as error:
        raise checkpoint.CheckpointError(f"the checkpoint's weights do not fit its config "
                                         f"({type(error).__name__}: {' '.join(str(error).split())[:200]})") from None
    return TrainedPolicy(agent, *spaces, config, state["global_step"])


def _spaces_of_env(config):
    """Format 4 checkpoints carry no spaces: make one env of the run to read them."""
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
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = config  # the run's config
        self.global_step = global_step  # the training step the weights come from

    def act(self, obs, deterministic=True, action_mask=None, state=None):
        """Action(s) for one observation or a batch, as the env returns them (an array, or a dict for a Dict
        space); Box actions clipped to bounds. `action_mask` (K,) or (B, K): the valid actions of a policy
        trained with env.action_mask=info (without it every action is allowed); a Dict key `action_mask` is
        read from the observation itself.

        A policy with memory (algo.memory) needs its `state`, (S,) or (B, S), from `initial_state()` at an
        episode's start and from the previous call after, and returns (action, new state)."""
        layout = self.agent.layout
        if self.agent.recurrent and state is None:
            raise ValueError("this policy has memory: act(obs, state=policy.initial_state()) at an episode's "
                             "start, then the state each call returns")
        single = layout.is_single(obs)
        if single:
            obs = layout.stack([obs])
        elif not layout.is_dict:
            obs = np.asarray(obs)
        info = None
        if action_mask is not None:
            info = {MASK_KEY: np.asarray(action_mask, dtype=np.float32).reshape(1, -1) if single else
                    np.asarray(action_mask, dtype=np.float32)}
        if state is not None:
            state = np.asarray(state, dtype=np.float32).reshape(1 if single else len(state), -1)
        action, state = self.act_packed(layout.pack(obs, info), deterministic, state)
        if self.agent.recurrent:
            return (action[0], state[0]) if single else (action, state)
        return action[0] if single else action

    def act_packed(self, packed, deterministic=True, state=None):
        """(actions (B, ...), new core states or None) for observations already packed by the policy's layout
        (rl.observations), (B, D), and a recurrent policy's states (B, S)."""
        packed = torch.from_numpy(np.asarray(packed, dtype=np.float32))
        if self.agent.recurrent:
            action, state = self.agent.act(packed, deterministic, torch.from_numpy(state))
            state = state.numpy()
        else:
            action = self.agent.act(packed, deterministic)
        action = action.numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return action, state

    def make_env(self, **env_kwargs):
        """A gymnasium env whose observations `act` takes: the run's env id and kwargs (`env_kwargs` added or
        overriding, e.g. render_mode="rgb_array"), wrapped as its evaluations were (Atari's preprocessing on
        whole games, MiniGrid's ImgObsWrapper, any env.wrappers), made through gymnasium whatever the run's
        env.backend."""
        from omegaconf import OmegaConf

        from rl.envs import make_env

        env = self.config.env
        kwargs = {**OmegaConf.to_container(env.kwargs), **env_kwargs}
        return make_env(env.id, env.get("preprocessing", "none"), list(env.get("wrappers", [])), **kwargs)

    def initial_state(self, batch=None):
        """The zero state of the actor's core where an episode begins: (S,), or (batch, S)."""
        zeros = self.agent.initial_state(1 if batch is None else batch)[0].numpy()
        return zeros[0] if batch is None else zeros
