"""Export a trained policy to one file that runs without rl or torch: `python -m rl.export <run dir> [key=value ...]`.

    python -m rl.export runs/Hopper-v4__trpo__1__...                  # ONNX of the latest checkpoint
    python -m rl.export runs/... checkpoint=best format=torchscript out=hopper.pt
    python -m rl.export runs/... deterministic=false                  # the distribution's parameters instead

The graph takes raw observations as the env gives them, batched (B, *observation shape), float32 (for any
other space than a Box of features: the packed vector of rl.observations, (B, D), which is
gymnasium.spaces.flatten of the observation, with the info's action mask appended when the run read one
there; the JSON's "layout" lists the pieces), and returns
what the env accepts: the saved observation normalization, the actor, then the Gaussian's mean clipped to the
Box bounds (float32) or the arg-max of the logits (int64). With deterministic=false it returns the
distribution's parameters as named outputs (mean and log_std, or logits) for the caller to sample.
<file>.json beside it names the inputs and outputs, the spaces, the env and the checkpoint it came from.
examples/run_onnx_policy.py runs such a file with numpy, gymnasium and onnxruntime alone.

The file is checked before it is kept: it runs (onnxruntime, or torch.jit for TorchScript) on 1,000
observations recorded in the env by the policy itself and must give rl.load(run).act()'s actions, equal to
float32 rounding (CHECK_TOLERANCE; every arg-max equal). Exit codes: 0 exported and checked; 2 a bad option,
a checkpoint the loader refuses, a policy kind that cannot be exported; 1 an export that failed its check
(nothing is kept).
"""

import io
import os
import sys
import warnings

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl.evaluate import EvaluateError, command_line

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
OPTIONS = {  # key -> (default, check, what it must be)
    "checkpoint": ("latest", lambda v: v in ("latest", "best") or (isinstance(v, int) and not isinstance(v, bool)
                                                                    and v >= 0), "latest, best or a global step"),
    "format": ("onnx", lambda v: v in FORMATS, " or ".join(FORMATS)),
    "deterministic": (True, lambda v: isinstance(v, bool), "true or false"),
    "out": (None, lambda v: v is None or (isinstance(v, str) and v != ""), "a file path"),
}
CHECK_OBSERVATIONS = 1000
# Largest |exported - rl.load().act()| allowed, relative to max(1, |action|): float32 rounding of the same
# arithmetic done by another runtime (seen: up to 5e-7 on the Hopper page's policy).
CHECK_TOLERANCE = 1e-5
ONNX_OPSET = 17


class ExportError(Exception):
    """A policy that cannot be exported (exit 2), or an export that failed its check (exit 1); one line."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


class DeployedPolicy(nn.Module):
    """Raw observations (B, *shape) -> env actions (or the distribution's parameters): what gets exported."""

    def __init__(self, agent, action_space, deterministic):
        super().__init__()
        self.normalizer, self.actor, self.deterministic = agent.obs_normalizer, agent.actor, deterministic
        self.box = isinstance(action_space, gym.spaces.Box)
        if self.box:
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))

    def forward(self, obs):
        params = self.actor(self.normalizer(obs.reshape(obs.shape[0], -1)))
        if not self.deterministic:
            return params
        action = self.actor.mode(*params)  # the mean, or the arg-max per categorical, or logit > 0 per bit
        if self.box:
            return torch.minimum(torch.maximum(action, self.low), self.high)  # np.clip, as TrainedPolicy.act
        return action


def output_names(action_space, deterministic):
    if deterministic:
        return ["action"]
    return ["mean", "log_std"] if isinstance(action_space, gym.spaces.Box) else ["logits"]


def exportable(policy):
    """Refuse, in one line, a policy kind this exporter does not know yet."""
    from rl.policy import BernoulliActor, CategoricalActor, GaussianActor, MultiCategoricalActor

    known = (GaussianActor, CategoricalActor, MultiCategoricalActor, BernoulliActor)
    if not isinstance(policy.agent.actor, known):
        raise ExportError(f"cannot export a {type(policy.agent.actor).__name__} policy yet")
    if policy.agent.recurrent:
        raise ExportError("cannot export a policy with memory (algo.memory) yet: its state would be an input "
                          "and an output of the graph")


def input_shape(policy):
    """The exported graph's observation shape without the batch: the raw one for a Box of features, else the
    packed vector's."""
    layout = policy.agent.layout
    return tuple(policy.observation_space.shape) if layout.flat else (layout.dim,)


def to_bytes(policy, deterministic, file_format):
    """The exported file's bytes for a TrainedPolicy: ONNX through torch's TorchScript-based exporter (no
    onnxscript needed), or a traced TorchScript module."""
    names = output_names(policy.action_space, deterministic)
    module = DeployedPolicy(policy.agent, policy.action_space, deterministic).eval()
    example = torch.zeros((2, *input_shape(policy)), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices: not the user's concern
        if file_format == "onnx":
            axes = {name: {0: "batch"} for name in ["obs", *names]}
            torch.onnx.export(module, (example,), buffer, input_names=["obs"], output_names=names,
                              dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
        else:
            torch.jit.save(torch.jit.trace(module, (example,)), buffer)
    return buffer.getvalue()


def runner(data, file_format):
    """obs (B, ...) float32 -> list of output arrays, from the exported bytes alone."""
    if file_format == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ExportError('checking an ONNX export needs onnxruntime: pip install -e ".[export]"') from None
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return lambda obs: session.run(None, {"obs": obs})
    loaded = torch.jit.load(io.BytesIO(data))

    def run_torchscript(obs):
        with torch.no_grad():
            outputs = loaded(torch.from_numpy(obs))
        return [t.detach().numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]

    return run_torchscript


def recorded_observations(policy, count=CHECK_OBSERVATIONS, seed=0):
    """`count` observations the policy meets in its env (made as its evaluation makes it; episodes restart as
    they end), or, when the env cannot be made here, samples of the observation space (masks all ones), in
    the exported graph's input form (raw, or packed). Returns (observations (count, ...) float32, source)."""
    from omegaconf import OmegaConf

    from rl.envs import make_vector_env
    from rl.observations import MASK_KEY

    env_cfg, layout = policy.config.env, policy.agent.layout
    try:
        envs = make_vector_env(env_cfg.id, 1, "sync", preprocessing=env_cfg.get("preprocessing", "none"),
                               env_wrappers=list(env_cfg.get("wrappers", [])), training=False,
                               **OmegaConf.to_container(env_cfg.kwargs))
    except Exception:  # noqa: BLE001 (any env that cannot be made: the check falls back to the space)
        policy.observation_space.seed(seed)
        samples = [policy.observation_space.sample() for _ in range(count)]
        if layout.mask_source == "observation":
            samples = [{**o, MASK_KEY: np.ones_like(o[MASK_KEY])} for o in samples]
        packed = layout.pack(layout.stack(samples))
        return _graph_input(policy, packed, samples), "space"
    observations, raw, (obs, info) = [], [], envs.reset(seed=seed)
    while len(observations) < count:
        packed = layout.pack(obs, info)
        observations.append(packed[0])
        raw.append(obs[0] if layout.flat else None)
        obs, _, _, _, info = envs.step(policy.act_packed(packed, deterministic=True)[0])  # same-step autoreset
    envs.close()
    return _graph_input(policy, np.stack(observations), raw), "env"


def _graph_input(policy, packed, raw):
    if policy.agent.layout.flat:
        return np.stack([np.asarray(o) for o in raw]).astype(np.float32)
    return packed.astype(np.float32)


def check(policy, data, file_format, deterministic):
    """Compare the exported file with the policy on recorded observations. Returns the check's record."""
    observations, source = recorded_observations(policy)
    outputs = runner(data, file_format)(observations)
    packed = observations.reshape(len(observations), -1)  # the packed form (a reshape for raw features)
    if deterministic:
        expected = [policy.act_packed(packed)[0]]
    else:
        with torch.no_grad():
            params = policy.agent.actor(policy.agent.obs_normalizer(torch.from_numpy(packed)))
        expected = [t.detach().numpy() for t in params]
    worst = 0.0
    for got, want in zip(outputs, expected):
        if got.shape != want.shape:
            raise ExportError(f"the exported policy returns shape {got.shape}, the policy {want.shape}", 1)
        if np.issubdtype(want.dtype, np.integer):
            mismatches = int((got != want).sum())
            if mismatches:
                raise ExportError(f"the exported policy chose another action on {mismatches} of "
                                  f"{len(observations)} recorded observations", 1)
            continue
        difference = np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
        worst = max(worst, float(difference.max()))
    if worst > CHECK_TOLERANCE:
        raise ExportError(f"the exported policy differs from rl.load().act() by {worst:.2e} (relative) on "
                          f"recorded observations; allowed {CHECK_TOLERANCE:g}", 1)
    return {"observations": len(observations), "source": source, "max_relative_difference": worst,
            "tolerance": CHECK_TOLERANCE}


def export(run_dir, options):
    """Export, check and write the file and its JSON. Returns the JSON record."""
    from rl import checkpoint
    from rl.files import write_atomically, write_json
    from rl.spaces import space_to_state
    from rl.trained import load

    if not os.path.isdir(run_dir):
        raise EvaluateError(f"{run_dir}: no such run directory")
    path = checkpoint.resolve(run_dir, options["checkpoint"])
    policy = load(run_dir, path)  # the loader rl.load and rl.evaluate use: bounded, sealed, checked
    exportable(policy)
    file_format, deterministic = options["format"], options["deterministic"]
    names = output_names(policy.action_space, deterministic)
    data = to_bytes(policy, deterministic, file_format)
    checked = check(policy, data, file_format, deterministic)
    out = options["out"] or os.path.join(run_dir, "export", f"policy-step{policy.global_step}"
                                         f"{'' if deterministic else '-stochastic'}{FORMATS[file_format]}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    box = isinstance(policy.action_space, gym.spaces.Box)
    described = {gym.spaces.Box: "Gaussian mean, clipped to the action bounds", gym.spaces.Discrete: "arg-max action",
                 gym.spaces.MultiDiscrete: "arg-max of each dimension's categorical",
                 gym.spaces.MultiBinary: "each bit whose logit is > 0"}[type(policy.action_space)]
    layout = policy.agent.layout
    with torch.no_grad():
        widths = [int(t.shape[-1]) for t in policy.agent.actor(torch.zeros(1, layout.dim))]  # each output's width
    record = {
        "file": os.path.abspath(out),
        "format": file_format,
        "inputs": [{"name": "obs", "shape": ["batch", *input_shape(policy)], "dtype": "float32",
                    "what": "raw observations, as the env returns them" if layout.flat else
                    "gymnasium.spaces.flatten(observation_space, obs)" +
                    (", then info['action_mask'] (ones where absent)" if layout.mask_source == "info" else "")}],
        "layout": layout.describe(),
        "action_mask": layout.mask_source,  # None, "observation" (a Dict key) or "info"
        "outputs": ([{"name": "action", "shape": ["batch", *policy.action_space.shape],
                      "dtype": "float32" if box else "int64", "what": described}]
                    if deterministic else [{"name": name, "shape": ["batch", width], "dtype": "float32"}
                                           for name, width in zip(names, widths)]),
        "observation_space": space_to_state(policy.observation_space),
        "action_space": space_to_state(policy.action_space),
        "env": policy.config.env.id,
        "env_preprocessing": policy.config.env.get("preprocessing", "none"),
        "env_wrappers": list(policy.config.env.get("wrappers", [])),
        "algo": policy.config.algo.name,
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": os.path.basename(path),
        "global_step": policy.global_step,
        "deterministic": deterministic,
        "check": checked,
    }
    write_atomically(out, lambda f: f.write(data))
    write_json(f"{out}.json", record)
    return record


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    code, record = command_line(argv, __doc__, export, OPTIONS, ExportError)
    if record is None:
        return code
    checked = record["check"]
    print(f"exported {record['algo']} on {record['env']} ({record['checkpoint']}, step {record['global_step']}) "
          f"as {record['format']} -> {record['file']}; checked on {checked['observations']} observations from "
          f"the {checked['source']}: max relative difference {checked['max_relative_difference']:.1e} "
          f"(allowed {checked['tolerance']:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
