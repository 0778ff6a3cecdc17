"""Vector environments.

We use gymnasium's SAME_STEP autoreset: when a sub-env's episode ends, `step` returns the first
observation of the next episode and puts the true last observation in `info["final_obs"]`. A
transition therefore never crosses an episode boundary, and a time-limit truncation can bootstrap
from the real final state.
"""

import importlib
import multiprocessing
import signal
import time
import warnings

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode


class EnvError(RuntimeError):
    """A sub-env failed (its step or reset raised, or its worker process died); the message is one line."""


BACKENDS = ("gymnasium", "envpool")
PREPROCESSING = ("none", "atari")


def make_vector_env(env_id, num_envs, vectorization="sync", start_method=None, wrappers=(), backend="gymnasium",
                    num_threads=0, preprocessing="none", env_wrappers=(), training=True, **env_kwargs):
    """`num_envs` copies of `env_id` made with `env_kwargs`, stepped with same-step autoreset.

    backend "gymnasium": gymnasium's sync or async vector env, each sub-env wrapped in the `preprocessing`
    wrappers (Atari's differ for training and evaluation: see atari_wrappers), the `env_wrappers` a config
    names (`env.wrappers`), Snapshot, SubEnv, then `wrappers`. backend "envpool": EnvPool's thread pool
    (`num_threads`, 0 = its default), Atari with EnvPool's own preprocessing set to match; see envpool_env.
    """
    if backend == "envpool":
        from rl.envpool_env import EnvPoolVectorEnv

        return EnvPoolVectorEnv(env_id, num_envs, num_threads, atari=preprocessing == "atari", training=training,
                                **env_kwargs)
    register_namespace(env_id)
    vector_kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP}
    if vectorization == "async":
        vector_kwargs["context"] = start_method
    preprocess = preprocessing_wrappers(preprocessing, env_wrappers, training)
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization, vector_kwargs=vector_kwargs,
                        wrappers=[*preprocess, Snapshot, SubEnv, *wrappers], **env_kwargs)
    envs.set_attr("sub_env_index", list(range(num_envs)))
    return envs


def preprocessing_wrappers(preprocessing="none", env_wrappers=(), training=True):
    """The wrappers a run puts on each sub-env, in order: its family's preprocessing, then `env.wrappers`."""
    preprocess = atari_wrappers(training) if preprocessing == "atari" else []
    return preprocess + [load_wrapper(path) for path in env_wrappers]


def make_env(env_id, preprocessing="none", env_wrappers=(), training=False, **env_kwargs):
    """One gymnasium env as a run's sub-envs are made (its preprocessing and `env.wrappers`); by default as
    evaluation makes them (Atari: whole games, raw rewards)."""
    register_namespace(env_id)
    env = gym.make(env_id, **env_kwargs)
    for wrap in preprocessing_wrappers(preprocessing, env_wrappers, training):
        env = wrap(env)
    return env


def close_vector_env(envs, failed=False):
    """Close a vector env so that no worker process outlives the run.

    After a failure, a polite close can wait forever on a worker that is stuck or gone, and workers ignore
    SIGTERM (see SubEnv), which is all multiprocessing's exit handler sends: so they are killed instead.
    """
    processes = list(getattr(envs, "processes", []))
    if not (failed and processes):
        try:
            envs.close()
        except Exception:  # a sub-env's own close failing must not hide the fault being reported
            if not failed:
                raise
        return
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=10)
    for pipe in getattr(envs, "parent_pipes", []):
        if pipe is not None:
            pipe.close()
    # gymnasium's close would first wait for the step in flight on pipes whose workers are gone (and so
    # would its __del__ at exit); there is nothing left for it to close.
    envs.closed = True


def dead_workers(envs, wait=2.0):
    """Indices of async sub-envs whose worker process has exited ([] for sync envs). A worker's pipe can
    close a moment before its process is gone, so this waits up to `wait` seconds for one to show."""
    processes = getattr(envs, "processes", [])
    deadline = time.monotonic() + wait
    while True:
        dead = [i for i, process in enumerate(processes) if not process.is_alive()]
        if dead or not processes or time.monotonic() > deadline:
            return dead
        time.sleep(0.05)


class SubEnv(gym.Wrapper):
    """One sub-env as the run sees it: its failures name it, and in an async worker it leaves stopping to
    the parent.

    Ctrl-C or a job scheduler's SIGTERM reaches the whole process group; the parent, not the worker, decides
    how to stop (checkpoint first, then close the workers), so workers ignore both.
    """

    sub_env_index = None  # set by make_vector_env

    def __init__(self, env):
        super().__init__(env)
        if multiprocessing.parent_process() is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def step(self, action):
        try:
            return self.env.step(action)
        except Exception as error:
            raise EnvError(f"sub-env {self.sub_env_index}: step raised {_one_line(error)}") from None

    def reset(self, **kwargs):
        try:
            return self.env.reset(**kwargs)
        except Exception as error:
            raise EnvError(f"sub-env {self.sub_env_index}: reset raised {_one_line(error)}") from None


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


class Snapshot(gym.Wrapper):
    """Lets a vector env save and restore each sub-env's state, for exact resumes.

    Captured exactly: gymnasium's classic-control envs (CartPole, Acrobot, Pendulum, MountainCar), whose whole
    state is `unwrapped.state` plus the time-limit counter and the env's RNG, and any env that defines
    `snapshot_state()` (its state as tensors and plain values) and `restore_state(state)`. Other envs (MuJoCo,
    Box2D, Atari, ...) report None, and a resume starts their episodes afresh.
    """

    def __init__(self, env):
        super().__init__(env)
        self.pending_snapshot = None

    def get_snapshot(self):
        base = self.env.unwrapped
        if hasattr(base, "snapshot_state"):
            state = {"own": base.snapshot_state()}
        elif type(base).__module__.startswith("gymnasium.envs.classic_control") and base.state is not None:
            state = {"state": torch.from_numpy(np.array(base.state, dtype=np.float64))}
        else:
            return None
        snapshot = {
            **state,
            "elapsed_steps": _elapsed_steps(self.env),
            "rng": base.np_random.bit_generator.state,
        }
        if hasattr(base, "steps_beyond_terminated"):
            snapshot["steps_beyond_terminated"] = base.steps_beyond_terminated
        return snapshot

    def apply_pending_snapshot(self):
        snapshot, self.pending_snapshot = self.pending_snapshot, None
        base = self.env.unwrapped
        if "own" in snapshot:
            base.restore_state(snapshot["own"])
        else:
            base.state = snapshot["state"].numpy().copy()
        if snapshot["elapsed_steps"] is not None:
            self.env.set_wrapper_attr("_elapsed_steps", snapshot["elapsed_steps"])
        base.np_random.bit_generator.state = snapshot["rng"]
        if "steps_beyond_terminated" in snapshot:
            base.steps_beyond_terminated = snapshot["steps_beyond_terminated"]


def _elapsed_steps(env):
    """The TimeLimit counter, or None for an env registered without a step limit."""
    try:
        return env.get_wrapper_attr("_elapsed_steps")
    except AttributeError:
        return None


def get_snapshots(envs):
    """One snapshot per sub-env, or None when any sub-env cannot be captured."""
    snapshots = list(envs.call("get_snapshot"))
    return None if any(s is None for s in snapshots) else snapshots


def set_snapshots(envs, snapshots):
    envs.set_attr("pending_snapshot", snapshots)
    envs.call("apply_pending_snapshot")


def final_observations(layout, info, done_indices):
    """The true last observations of the sub-envs in `done_indices`, stacked in the env's form (an array
    (len, ...) or a dict of them) for `layout` (an rl.observations.ObservationLayout) to pack."""
    final = info["final_obs"]
    return layout.stack([final[i] for i in done_indices])


def quiet_version_warnings():
    """Gymnasium repeats its "out of date" warning (with terminal colour codes) for every env it makes; our
    start banner says it once, in plain words."""
    warnings.filterwarnings("ignore", message=r".*The environment .* is out of date", category=DeprecationWarning)


# Env families whose ids exist once a package registers them: id prefix -> (module, how it registers, extra).
NAMESPACES = {
    "ALE/": ("ale_py", "register_envs", "atari"),
    "MinAtar/": ("minatar.gym", "call", "minatar"),
    "MiniGrid-": ("minigrid", "import", "minigrid"),
    "BabyAI-": ("minigrid", "import", "minigrid"),
    "PointMaze_": ("gymnasium_robotics", "register_envs", "robotics"),
    "AntMaze_": ("gymnasium_robotics", "register_envs", "robotics"),
}


def register_namespace(env_id):
    """Import the package that registers `env_id`'s family (ALE/, MinAtar/, MiniGrid-, mazes) when it is not
    registered yet; ValueError saying what to install when the package is missing."""
    name = env_id.rpartition(":")[2]
    if name in gym.registry:
        return
    for prefix, (module_name, how, extra) in NAMESPACES.items():
        if name.startswith(prefix) or (prefix == "ALE/" and name.endswith("NoFrameskip-v4")):
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                raise ValueError(f"{name} needs the {module_name.split('.')[0]} package: "
                                 f'pip install -e ".[{extra}]"') from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the packages' notices about other envs of theirs
                if how == "register_envs":
                    gym.register_envs(module)
                elif how == "call":
                    module.register_envs()
            return


def atari_wrappers(training):
    """Gymnasium's Atari preprocessing (Mnih et al. 2015; Machado et al. 2018) for an ALE env made with
    frameskip=1, as sub-env wrappers.

    RecordEpisodeStatistics sits on the raw game, so info["episode"] is the game's score over all its lives.
    Then AtariPreprocessing: up to 30 no-op actions at reset, frame skip 4 with the max of the last two frames,
    84x84 grayscale. For training only, a lost life ends the episode (EpisodicLife) and rewards are clipped to
    their sign; evaluation plays whole games for the raw score. Last, FrameStackObservation: (4, 84, 84) uint8.
    """
    from gymnasium.wrappers import (
        AtariPreprocessing,
        FrameStackObservation,
        RecordEpisodeStatistics,
        TransformReward,
    )

    def preprocess(env):
        return AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False,
                                  grayscale_obs=True, scale_obs=False)

    def clip_reward(env):
        return TransformReward(env, np.sign)

    def stack(env):
        return FrameStackObservation(env, 4)

    return [RecordEpisodeStatistics, preprocess, *([EpisodicLife, clip_reward] if training else []), stack]


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode for learning, not the game: the next reset takes one no-op step where
    the game goes on, a real reset only after game over. (Gymnasium's terminal_on_life_loss restarts the
    whole game at every lost life, so later lives would never be played.)"""

    def __init__(self, env):
        super().__init__(env)
        self.lives, self.game_over = 0, True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        life_lost = 0 < lives < self.lives
        self.lives = lives
        return obs, reward, terminated or life_lost, truncated, info

    def reset(self, **kwargs):
        if not self.game_over and kwargs.get("seed") is None:  # a seeded reset always restarts the game
            obs, _, terminated, truncated, info = self.env.step(0)
            if not (terminated or truncated):
                self.lives = self.env.unwrapped.ale.lives()
                return obs, info
        obs, info = self.env.reset(**kwargs)
        self.lives, self.game_over = self.env.unwrapped.ale.lives(), False
        return obs, info


def load_wrapper(path):
    """The gymnasium wrapper class (or any env -> env callable) that "package.module:Name" or
    "package.module.Name" names; ValueError in one line when it cannot be imported."""
    module_name, colon, name = path.rpartition(":")
    if not colon:
        module_name, _, name = path.rpartition(".")
    try:
        wrapper = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import wrapper {path!r} ({type(error).__name__}: {error})") from None
    if not callable(wrapper):
        raise ValueError(f"wrapper {path!r} is not callable")
    return wrapper


def check_env_id(env_id, backend="gymnasium"):
    """Raise ValueError with a one-line reason when `env_id` is not an env of `backend`.

    `module:EnvId` (gymnasium's form for envs registered by importing a module) imports the module first,
    from the current directory or PYTHONPATH.
    """
    if backend == "envpool":
        try:
            from rl.envpool_env import available_ids, envpool_id
        except ImportError:
            raise ValueError('env.backend=envpool needs EnvPool: pip install -e ".[envpool]"') from None
        if envpool_id(env_id) not in available_ids():
            raise ValueError("not an EnvPool env (see envpool.list_all_envs())")
        return
    register_namespace(env_id)
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except Exception as error:  # the user's module may fail in any way; say which module and how
            raise ValueError(f"importing module {module!r} failed: {type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}") from None
    try:
        gym.spec(name)
    except Exception as error:  # gymnasium raises several error types here
        raise ValueError(str(error).splitlines()[0]) from None
