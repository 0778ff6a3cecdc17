"""The cuda learner against the CPU one: the same rollouts, the same math within float tolerance, an acting
copy that always matches the learner, bit-identical deterministic runs, and checkpoints that move between
devices."""

import copy
import json
import math
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.utils import parameters_to_vector

from rl import results, train
from rl.algos import ppo, trpo
from rl.cg import conjugate_gradient
from rl.envs import make_vector_env
from rl.fisher import FISHER_VECTOR_PRODUCTS
from rl.policy import Agent
from rl.results import scalars
from rl.rollout import Batch, Collector
from tests.reproducibility.runs import final_parameters, same_parameters

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "algo"


def run_train(run_dir, *overrides):
    return results.train(run_dir, *overrides, cwd=REPO, timeout=900)


@pytest.mark.parametrize("algo", ["ppo", "trpo", "npg"])
def test_training_on_cuda_runs_and_stays_finite(tmp_path, algo):
    run_train(tmp_path / algo, f"algo={algo}", "env=Hopper-v4", "device=cuda", "total_timesteps=8192",
              "eval_episodes=2", "algo.num_steps=1024", "env.num_envs=2")
    summary = json.loads((tmp_path / algo / "summary.json").read_text())
    assert summary["total_timesteps"] == 8192 and math.isfinite(summary["eval_return_mean"])
    assert all(torch.isfinite(t).all() for t in final_parameters(tmp_path / algo).values() if t.is_floating_point())


def hopper_parts(device, algo="ppo"):
    cfg = OmegaConf.create({"algo": OmegaConf.load(CONFIGS / f"{algo}.yaml")})
    cfg.algo.num_steps = 256
    if algo == "ppo":
        cfg.algo.num_minibatches = 4
    envs = make_vector_env("Hopper-v4", 2)
    torch.manual_seed(0)
    agent = Agent(envs.single_observation_space, envs.single_action_space, normalize_observations=True,
                  normalize_rewards=True).to(device)
    acting = agent if device == "cpu" else copy.deepcopy(agent).cpu()
    return cfg.algo, envs, agent, acting, Collector(envs, acting, 256, device, seed=3)


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_acting_copy_matches_the_learner_after_every_update(algo):
    cfg, envs, agent, acting, collector = hopper_parts("cuda", algo)
    module = ppo if algo == "ppo" else trpo
    optimizers = module.make_optimizers(agent, cfg)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for iteration in range(1, 4):
        before = parameters_to_vector(agent.parameters()).detach().clone()
        parts = train.Parts(envs, agent, acting, optimizers, generator, collector, module)
        train.iterate(parts, cfg, iteration, 3, 0, "stop")
        assert not torch.equal(before, parameters_to_vector(agent.parameters()).detach())
        learner = {k: v.cpu() for k, v in agent.state_dict().items()}
        assert all(torch.equal(learner[k], v) for k, v in acting.state_dict().items()), iteration
    envs.close()


def test_a_rollout_for_a_cuda_learner_equals_the_rollout_for_a_cpu_learner():
    rollouts = {}
    for device in ("cpu", "cuda"):
        _, envs, _, _, collector = hopper_parts(device)
        torch.manual_seed(11)  # the acting RNG
        rollout, _ = collector.collect()
        rollouts[device] = {name: getattr(rollout, name).cpu() for name in ("obs", "actions", "log_probs", "values",
                                                                              "rewards", "next_values", "done")}
        envs.close()
    for name, tensor in rollouts["cpu"].items():
        assert torch.equal(tensor, rollouts["cuda"][name]), name


def float64_problem(device, size=512):
    torch.manual_seed(1)
    agent = Agent(gym.spaces.Box(-1.0, 1.0, (11,)), gym.spaces.Box(-1.0, 1.0, (3,)), (64, 64), (64, 64)).double()
    agent = agent.to(device)
    generator = torch.Generator().manual_seed(2)
    obs = torch.randn(size, 11, dtype=torch.float64, generator=generator).to(device)
    with torch.no_grad():
        mean, log_std = agent.actor(obs)
        actions = agent.actor.sample(mean, log_std)
        log_probs = agent.actor.log_prob(mean, log_std, actions)
        values = agent.critic(obs)
    advantages = torch.randn(size, dtype=torch.float64, generator=generator).to(device)
    return agent, Batch(obs, actions, log_probs, values, advantages, values + advantages)


def to_cpu(agent, batch):
    return copy.deepcopy(agent).cpu(), Batch(*(getattr(batch, n).cpu() for n in batch._tensors()))


@pytest.mark.parametrize("method", ["analytic", "hessian"])
def test_fisher_vector_products_and_cg_on_cuda_match_the_cpu(method):
    agent, batch = float64_problem("cuda")
    cpu_agent, cpu_batch = to_cpu(agent, batch)
    vector = torch.randn(sum(p.numel() for p in agent.actor.parameters()), dtype=torch.float64)
    on_cuda = FISHER_VECTOR_PRODUCTS[method](agent.actor, batch.obs)(vector.cuda()).cpu()
    on_cpu = FISHER_VECTOR_PRODUCTS[method](cpu_agent.actor, cpu_batch.obs)(vector)
    assert torch.allclose(on_cuda, on_cpu, rtol=1e-10, atol=1e-12)

    product = FISHER_VECTOR_PRODUCTS[method](agent.actor, batch.obs)
    cpu_product = FISHER_VECTOR_PRODUCTS[method](cpu_agent.actor, cpu_batch.obs)
    # The sync-free (masked) CG path on the device against the early-exit path on the CPU.
    x_cuda, _, it_cuda = conjugate_gradient(lambda v: product(v) + 0.1 * v, vector.cuda(), 30, 1e-10)
    x_cpu, _, it_cpu = conjugate_gradient(lambda v: cpu_product(v) + 0.1 * v, vector, 30, 1e-10)
    assert torch.allclose(x_cuda.cpu(), x_cpu, rtol=1e-8, atol=1e-10) and int(it_cuda) == int(it_cpu)


def test_a_trpo_update_on_cuda_matches_the_cpu():
    cfg = OmegaConf.load(CONFIGS / "trpo.yaml")
    agent, batch = float64_problem("cuda")
    cpu_agent, cpu_batch = to_cpu(agent, batch)
    for module_agent, module_batch, device in ((agent, batch, "cuda"), (cpu_agent, cpu_batch, "cpu")):
        trpo.update(module_agent, trpo.make_optimizers(module_agent, cfg), module_batch, cfg,
                    torch.Generator(device=device).manual_seed(0))
    cuda_params = {k: v.cpu() for k, v in agent.state_dict().items()}
    for key, value in cpu_agent.state_dict().items():
        assert torch.allclose(cuda_params[key], value, rtol=1e-7, atol=1e-9), key


def test_deterministic_runs_on_one_gpu_are_bit_identical(tmp_path):
    overrides = ["algo=ppo", "env=Hopper-v4", "device=cuda", "deterministic=true", "total_timesteps=4096",
                 "eval_episodes=2", "eval_every=1"]
    run_train(tmp_path / "a", *overrides)
    run_train(tmp_path / "b", *overrides)
    assert scalars(tmp_path / "a") == scalars(tmp_path / "b")
    assert same_parameters(final_parameters(tmp_path / "a"), final_parameters(tmp_path / "b"))


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_moves_between_devices(tmp_path, first, then):
    run_dir = tmp_path / f"{first}_to_{then}"
    run_train(run_dir, "algo=trpo", "env=Hopper-v4", f"device={first}", "total_timesteps=8192",
              "stop_after_steps=4096", "eval_episodes=1")
    run_train(run_dir, f"resume={run_dir}", f"device={then}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_timesteps"] == 8192
