"""Deterministic evaluation on fresh envs, and `python -m rl.evaluate <run dir> [key=value ...]`.

    python -m rl.evaluate runs/Hopper-v4__trpo__1__20261128-120000                  # latest checkpoint
    python -m rl.evaluate runs/... checkpoint=best episodes=20 deterministic=false seed=7
    python -m rl.evaluate runs/... video=true video_episodes=2       # MP4s in <run dir>/videos/

Prints the mean +/- std return and length and writes <run dir>/eval.json. Without `seed` and `episodes` it
plays the episodes training's evaluations played (seeds seed + 10000 + i, the run's eval_episodes of them; 10
for a run that did not evaluate), so `checkpoint=latest` of a finished run reproduces its summary.json.
"""

import itertools
import os
import sys

import numpy as np
import torch

from rl.envs import check_env_id, make_vector_env, quiet_version_warnings

# Evaluation sub-env i is seeded seed + EVAL_SEED_OFFSET + i: every evaluation point sees the same episode
# starts, and none of them is a training sub-env's.
EVAL_SEED_OFFSET = 10_000
OPTIONS = {  # key -> (default, check, what it must be)
    "episodes": (None, lambda v: v is None or (_integer(v) and v >= 1), "a positive integer"),  # None: the run's
    "checkpoint": ("latest", lambda v: v in ("latest", "best") or (_integer(v) and v >= 0),
                   "latest, best or a global step"),
    "deterministic": (True, lambda v: isinstance(v, bool), "true or false"),
    "video": (False, lambda v: isinstance(v, bool), "true or false"),
    "video_episodes": (1, lambda v: _integer(v) and v >= 1, "a positive integer"),
    "seed": (None, lambda v: v is None or (_integer(v) and 0 <= v < 2**32 - 1_000), "an integer >= 0 or null"),
    "progress": ("auto", lambda v: v in ("auto", True, False), "auto, true or false"),
}


def evaluate(agent, env_id, episodes, seed, env_kwargs=None, deterministic=True, progress=False, wrappers=(),
             backend="gymnasium", preprocessing="none", env_wrappers=()):
    """Run one episode in each of `episodes` fresh sub-envs (sub-env i seeded `seed + i`).

    The policy acts by its mode (mean / argmax) unless `deterministic=False`; normalizer statistics are
    read, never updated. Torch's global RNG is saved and restored around the evaluation, so evaluating
    never changes what a training run draws next. `agent` must be on the CPU. `progress` shows a bar of
    finished episodes. Returns (returns, lengths): lists of raw episode returns and lengths (for Atari, whole
    games: evaluation's preprocessing neither ends episodes at a lost life nor clips rewards).
    """
    envs = make_vector_env(env_id, episodes, "sync", wrappers=wrappers, backend=backend, preprocessing=preprocessing,
                           env_wrappers=env_wrappers, training=False, **(env_kwargs or {}))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc="evaluating", unit="episode", leave=False, dynamic_ncols=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _run_episodes(agent, envs, episodes, seed, deterministic, bar)
    finally:
        if bar is not None:
            bar.close()
        envs.close()


@torch.no_grad()
def _run_episodes(agent, envs, episodes, seed, deterministic, bar):
    obs, info = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    finished = np.zeros(episodes, dtype=bool)
    action_space = envs.single_action_space
    low, high = getattr(action_space, "low", None), getattr(action_space, "high", None)
    state = agent.initial_state(episodes)[0] if agent.recurrent else None  # each env plays one episode
    while not finished.all():
        packed = torch.from_numpy(agent.layout.pack(obs, info)).float()
        if agent.recurrent:
            action, state = agent.act(packed, deterministic, state)
            action = action.numpy()
        else:
            action = agent.act(packed, deterministic).numpy()
        if low is not None:
            action = np.clip(action, low, high)
        obs, reward, terminated, truncated, info = envs.step(action)
        returns += np.where(finished, 0.0, reward)
        lengths += ~finished
        newly = (terminated | truncated) & ~finished
        finished |= newly
        if bar is not None and newly.any():
            bar.update(int(newly.sum()))
    return returns.tolist(), lengths.tolist()


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


class EvaluateError(Exception):
    """A bad argument or a run that cannot be evaluated; the message is one line."""


def parse_options(arguments, schema=OPTIONS):
    """`key=value` arguments (YAML values) -> the options dict, defaults filled in. `schema`: key -> (default,
    check, what it must be), as OPTIONS (rl.export passes its own)."""
    options = {key: default for key, (default, _, _) in schema.items()}
    for argument in arguments:
        key, equals, text = argument.partition("=")
        if not equals:
            raise EvaluateError(f"{argument}: expected key=value (keys: {', '.join(schema)})")
        if key not in schema:
            raise EvaluateError(f"{key}: unknown option (keys: {', '.join(schema)})")
        options[key] = checked_value(schema, key, text)
    return options


def checked_value(schema, key, text):
    """The YAML value of `text` for `key`, or EvaluateError saying what it must be."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if not schema[key][1](value):
        raise EvaluateError(f"{key}={text}: must be {schema[key][2]}")
    return value


def _video_wrappers(env_id, folder, prefix, count):
    """RecordVideo on the first `count` sub-envs, each recording its one episode to <prefix>-ep<i>."""
    from gymnasium.error import DependencyNotInstalled
    from gymnasium.wrappers import RecordVideo

    try:
        import moviepy  # noqa: F401  (RecordVideo writes MP4s through it)
    except ImportError:
        raise EvaluateError('video=true needs moviepy: pip install -e ".[video]"') from None
    index = itertools.count()

    def record(env):
        i = next(index)
        if i >= count:
            return env
        try:
            return RecordVideo(env, folder, episode_trigger=lambda episode: episode == 0, name_prefix=f"{prefix}-ep{i}")
        except DependencyNotInstalled as error:
            raise EvaluateError(f"video=true: {error}") from None

    return [record]


def _render_check(env_id, env_kwargs, mujoco):
    """Render one frame, so a missing off-screen GL backend is one clear line, not a traceback mid-run."""
    import gymnasium as gym

    try:
        env = gym.make(env_id, render_mode="rgb_array", **env_kwargs)
        try:
            env.reset(seed=0)
            frame = env.render()
        finally:
            env.close()
    except Exception as error:  # GL back-ends and renderer dependencies fail in many ways
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        if not mujoco:
            raise EvaluateError(f"video=true: cannot render {env_id} ({reason})") from None
        backend = os.environ.get("MUJOCO_GL")
        raise EvaluateError(f"video=true: cannot render {env_id} off-screen (MUJOCO_GL={backend}: {reason}); try "
                            "MUJOCO_GL=egl, or MUJOCO_GL=osmesa after installing libosmesa6") from None
    if frame is None:
        raise EvaluateError(f"video=true: {env_id} does not render to images (render_mode=rgb_array)")


def run(run_dir, options):
    """Evaluate a run's checkpoint as `options` say; write eval.json. Returns the record."""
    import gymnasium as gym
    from omegaconf import OmegaConf

    from rl import checkpoint
    from rl.files import write_json
    from rl.trained import checkpoint_size_limit, trained_policy

    if not os.path.isdir(run_dir):
        raise EvaluateError(f"{run_dir}: no such run directory")
    if options["video"]:
        # Headless MuJoCo rendering: EGL works without a display (Mesa falls back to software). Set before
        # anything imports mujoco, which reads it once; other envs ignore it.
        os.environ.setdefault("MUJOCO_GL", "egl")
    path = checkpoint.resolve(run_dir, options["checkpoint"])
    state = checkpoint.load(path, checkpoint_size_limit(run_dir))
    config = checkpoint.config_of(state)
    env_id, env_kwargs = config.env.id, OmegaConf.to_container(config.env.kwargs)
    # Videos render through gymnasium; otherwise evaluate on the backend the run trained on.
    backend = "gymnasium" if options["video"] else config.env.get("backend", "gymnasium")
    try:
        check_env_id(env_id, backend)
    except ValueError as error:
        raise EvaluateError(f"{run_dir}: its env {env_id} cannot be made here ({error}); a module:EnvId env "
                            "needs its module on PYTHONPATH or in the current directory") from None
    seed = options["seed"] if options["seed"] is not None else config.seed + EVAL_SEED_OFFSET
    if options["episodes"] is None:  # as many as training's evaluations played
        options = {**options, "episodes": config.eval_episodes if config.get("eval_episodes", 0) > 0 else 10}
    wrappers, video_folder = (), None
    if options["video"]:
        _render_check(env_id, env_kwargs, "mujoco" in str(gym.spec(env_id.rpartition(":")[2]).entry_point))
        video_folder = os.path.join(run_dir, "videos")
        prefix = f"{env_id.rpartition(':')[2].replace('/', '-')}-step{state['global_step']}"  # ALE/Pong-v5: a file
        wrappers = _video_wrappers(env_id, video_folder, prefix, min(options["video_episodes"], options["episodes"]))
        env_kwargs = {**env_kwargs, "render_mode": "rgb_array"}
    policy = trained_policy(state)
    if config.get("torch_threads") is not None:
        # As training evaluated: another thread count sums in another order, and a MuJoCo episode turns that
        # rounding into another trajectory (Hopper: 3681.5 with 2 threads against the run's 3681.3 with 1).
        torch.set_num_threads(config.torch_threads)
    interactive = sys.stderr.isatty() if options["progress"] == "auto" else options["progress"]
    returns, lengths = evaluate(policy.agent, env_id, options["episodes"], seed, env_kwargs,
                                options["deterministic"], interactive, wrappers, backend,
                                config.env.get("preprocessing", "none"), list(config.env.get("wrappers", [])))
    record = {
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": os.path.basename(path),
        "global_step": state["global_step"],
        "env": env_id,
        "backend": backend,
        "episodes": options["episodes"],
        "deterministic": options["deterministic"],
        "seed": seed,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length_mean": float(np.mean(lengths)),
        "length_std": float(np.std(lengths)),
        "returns": returns,
        "lengths": lengths,
        "videos": sorted(os.path.join(video_folder, name) for name in os.listdir(video_folder)
                         if name.startswith(prefix) and name.endswith(".mp4")) if video_folder else [],
    }
    write_json(os.path.join(run_dir, "eval.json"), record)
    return record


def command_line(argv, doc, work, schema=OPTIONS, own_errors=()):
    """The shape `python -m rl.evaluate` and `rl.export` share: help, `<run dir> key=value ...`, and every
    refusal as one `error:` line. `own_errors`: the tool's exceptions, each with its `exit_code`. Returns
    (exit code, what `work(run_dir, options)` returned, or None when it did not finish)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(doc.strip())
        return (0 if argv else 2), None
    from rl.checkpoint import CheckpointError

    quiet_version_warnings()
    try:
        return 0, work(argv[0], parse_options(argv[1:], schema))
    except (EvaluateError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2, None
    except own_errors as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code, None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    code, record = command_line(argv, __doc__, run)
    if record is None:
        return code
    kind = "deterministic" if record["deterministic"] else "stochastic"
    print(f"eval return {record['return_mean']:.1f} +/- {record['return_std']:.1f}, length "
          f"{record['length_mean']:.1f} +/- {record['length_std']:.1f} over {record['episodes']} {kind} episodes "
          f"({record['checkpoint']}, step {record['global_step']}) -> {os.path.join(argv[0], 'eval.json')}")
    for video in record["videos"]:
        print(f"video: {video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
