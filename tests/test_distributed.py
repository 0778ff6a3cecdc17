"""Data-parallel updates equal the single-process update on the global batch.

Two gloo ranks each hold half of a batch's envs; PPO, TRPO and NPG updates on them must give the
parameters one process computes on the whole batch (float64, to rounding error), and the ranks must be
bit-identical to each other. Also: the collectives themselves against direct computations.
"""

import os
import socket

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from rl import distributed
from rl.algos import ppo, trpo
from rl.normalize import RunningMeanStd
from rl.policy import Agent
from rl.rollout import Batch

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "algo")
STEPS, ENVS, WORLD = 64, 4, 2  # the global batch: 64 steps of 4 envs; each rank holds 2 of the envs


def algo_config(name, **overrides):
    cfg = OmegaConf.load(os.path.join(CONFIGS, f"{name}.yaml"))
    cfg.merge_with({"update_epochs": 3, "num_minibatches": 4, "cg_iters": 10, "vf_iters": 3, "vf_minibatches": 4,
                    **overrides} if name == "ppo" else {"cg_iters": 10, "vf_iters": 3, "vf_minibatches": 4,
                                                        **overrides})
    return cfg


CASES = {  # name: (algorithm module, config, discrete actions?)
    "ppo": (ppo, algo_config("ppo"), True),
    "ppo_gaussian_early_stop": (ppo, algo_config("ppo", target_kl=1e-7), False),
    "trpo": (trpo, algo_config("trpo"), False),
    "trpo_discrete": (trpo, algo_config("trpo"), True),
    "npg": (trpo, algo_config("npg"), False),
    # a Dict of a small image, a vector and an action mask: CNN encoders, the masked categorical
    "ppo_masked_dict": (ppo, algo_config("ppo"), "masked_dict"),
    "trpo_masked_dict": (trpo, algo_config("trpo"), "masked_dict"),
    # recurrent actor and critic on sequences with episode starts inside: chunked minibatches, FVP through time
    "ppo_gru": (ppo, algo_config("ppo"), "gru"),
    "trpo_lstm": (trpo, algo_config("trpo"), "lstm"),
}
MASKED_DICT = gym.spaces.Dict({"grid": gym.spaces.Box(0, 255, (6, 5, 2), np.uint8),
                               "x": gym.spaces.Box(-1.0, 1.0, (3,)), "action_mask": gym.spaces.MultiBinary(3)})


def masked_dict_observations(agent, n):
    MASKED_DICT.seed(0)
    observations = [MASKED_DICT.sample() for _ in range(n)]
    for i, o in enumerate(observations):
        o["action_mask"][i % 3] = 1  # at least one allowed action
    return torch.from_numpy(agent.layout.pack(agent.layout.stack(observations))).double()


def make_problem(discrete):
    """An agent and a global batch (row t * ENVS + e), float64, the same in every process. `discrete`: True
    (Discrete(3)), False (a Box), "masked_dict" (MASKED_DICT observations, Discrete(3) actions), or "gru" /
    "lstm" (a recurrent agent, Discrete(3) for the GRU, a Box for the LSTM, with episode starts and stored
    core states)."""
    torch.manual_seed(0)
    masked, recurrent = discrete == "masked_dict", discrete in ("gru", "lstm")
    action_space = gym.spaces.Discrete(3) if discrete and discrete != "lstm" else gym.spaces.Box(-1.0, 1.0, (2,))
    observation_space = MASKED_DICT if masked else gym.spaces.Box(-1.0, 1.0, (5,))
    agent = Agent(observation_space, action_space, actor_hidden_sizes=(16,), critic_hidden_sizes=(16,),
                  cnn={"channels": (4,), "kernels": (3,), "strides": (1,), "features": 8},
                  memory={"kind": discrete, "size": 6} if recurrent else None).double()
    obs = masked_dict_observations(agent, STEPS * ENVS) if masked else \
        torch.randn(STEPS * ENVS, 5, dtype=torch.float64)
    memory = {}
    if recurrent:
        generator = torch.Generator().manual_seed(1)
        memory = {"starts": (torch.rand(STEPS * ENVS, generator=generator) < 0.1).double(),
                  "actor_states": 0.3 * torch.randn(STEPS * ENVS, agent.actor.net.state_size, dtype=torch.float64,
                                                    generator=generator),
                  "critic_states": 0.3 * torch.randn(STEPS * ENVS, agent.critic.net.state_size,
                                                     dtype=torch.float64, generator=generator),
                  "sequence_length": STEPS}
    probe = Batch(obs, obs, obs, obs, obs, obs, num_envs=ENVS, **memory)  # only for its memory()
    with torch.no_grad():
        params = agent.actor(obs, *probe.memory("actor"))
        actions = agent.actor.sample(*params)
        log_probs = agent.actor.log_prob(*params, actions)
        values = agent.critic(obs, *probe.memory("critic"))
    advantages = torch.randn(STEPS * ENVS, dtype=torch.float64)
    return agent, Batch(obs, actions, log_probs, values, advantages, values + advantages, num_envs=ENVS, **memory)


def shard(batch, rank):
    """This rank's envs: columns [rank * ENVS / WORLD, (rank + 1) * ENVS / WORLD) of the (T, N) layout."""
    per_rank = ENVS // WORLD
    columns = torch.arange(rank * per_rank, (rank + 1) * per_rank)
    rows = (torch.arange(STEPS)[:, None] * ENVS + columns).reshape(-1)
    return Batch(**{name: getattr(batch, name)[rows] for name in batch._tensors()}, num_envs=per_rank,
                 sequence_length=batch.sequence_length)


def run_update(case, batch_for_rank):
    module, cfg, discrete = CASES[case]
    agent, batch = make_problem(discrete)
    optimizers = module.make_optimizers(agent, cfg)
    metrics = module.update(agent, optimizers, batch_for_rank(batch), cfg, torch.Generator().manual_seed(7))
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}, metrics


def rank_main(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.initialize()
    results = {case: run_update(case, lambda batch: shard(batch, rank)) for case in CASES}
    results["collectives"] = collective_checks(rank)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.shutdown()


def collective_checks(rank):
    """Global statistics from rank-local pieces, to compare with direct computations on the union."""
    generator = torch.Generator().manual_seed(3)
    data = torch.randn(WORLD, 50, 3, dtype=torch.float64, generator=generator)
    stats = RunningMeanStd((3,))
    snapshot = (stats.count.clone(), stats.mean.clone(), stats.var.clone())
    for chunk in data[rank].split(10):  # five local updates, as a rollout would make
        stats.update(chunk.numpy())
    distributed.merge_running_stats(stats, snapshot)
    values = data[rank, :, 0].clone()
    return {"merged": (stats.count.clone(), stats.mean.clone(), stats.var.clone()),
            "normalized": distributed.normalize(values), "explained": distributed.explained_variance(
                values * 0.5, values),
            "nearly_constant": {dtype: distributed.global_mean_var([nearly_constant(dtype)[rank]])[0]
                                for dtype in (torch.float32, torch.float64)}}


def nearly_constant(dtype):
    """(WORLD, 500) values of 1e6 + noise of 1e-2 (float64) or 1 (float32, whose spacing at 1e6 is 0.06): the
    critic targets of a solved task, where sum x^2 - (sum x)^2 / n cancels."""
    noise = torch.randn(WORLD, 500, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return (1e6 + noise * (1e-2 if dtype == torch.float64 else 1.0)).to(dtype)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_compute_the_single_process_update(ranks, case):
    expected, expected_metrics = run_update(case, lambda batch: batch)
    for rank in ranks:
        params, metrics = rank[case]
        worst = max((params[k] - expected[k]).abs().max().item() for k in expected)
        print(f"{case}: max parameter difference {worst:.2e}")  # shown by pytest -rP
        # seen: 1e-18 to 1.4e-14; through a 64-step LSTM unroll, whose half-batch sums CG then amplifies, 7.8e-12
        tolerance = 1e-10 if CASES[case][2] in ("gru", "lstm") else 1e-12
        assert worst < tolerance, f"{case}: max parameter difference {worst:.2e}"
        for key, value in expected_metrics.items():
            assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key  # float32 metric sums
    moved = max((ranks[0][case][0][k] - make_problem(CASES[case][2])[0].state_dict()[k]).abs().max().item()
                for k in expected)
    assert moved > 1e-4, "the update did not change the parameters: the comparison would prove nothing"


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_are_bit_identical(ranks, case):
    first, second = ranks[0][case][0], ranks[1][case][0]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_early_stop_is_decided_on_the_global_kl(ranks):
    _, metrics = run_update("ppo_gaussian_early_stop", lambda batch: batch)
    assert metrics["losses/epochs"] < CASES["ppo_gaussian_early_stop"][1].update_epochs  # it does stop early
    assert all(rank["ppo_gaussian_early_stop"][1]["losses/epochs"] == metrics["losses/epochs"] for rank in ranks)


def test_merged_statistics_normalization_and_explained_variance_are_global(ranks):
    generator = torch.Generator().manual_seed(3)
    data = torch.randn(WORLD, 50, 3, dtype=torch.float64, generator=generator)
    union = data.reshape(-1, 3)
    for rank in ranks:
        count, mean, var = rank["collectives"]["merged"]
        assert count.item() == pytest.approx(100 + 1e-4)
        # The prior (count 1e-4, mean 0, var 1) weighs 1e-6 of the result.
        assert torch.allclose(mean, union.mean(0), atol=1e-5) and torch.allclose(var, union.var(0, unbiased=False),
                                                                                 atol=1e-5)
        assert torch.equal(count, ranks[0]["collectives"]["merged"][0]) and torch.equal(
            mean, ranks[0]["collectives"]["merged"][1])
    values = data[:, :, 0]
    expected = (values - values.mean()) / (values.reshape(-1).std() + 1e-8)
    for r, rank in enumerate(ranks):
        assert torch.allclose(rank["collectives"]["normalized"], expected[r], atol=1e-12)
        flat = values.reshape(-1)
        direct = 1 - (flat - 0.5 * flat).var() / flat.var()
        assert rank["collectives"]["explained"] == pytest.approx(direct.item(), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_variance_of_nearly_constant_data_does_not_cancel(ranks, dtype):
    union = nearly_constant(dtype).reshape(-1)
    expected_mean, expected_var = union.double().mean().item(), union.double().var().item()
    for rank in ranks:
        mean, var = rank["collectives"]["nearly_constant"][dtype]
        assert mean == pytest.approx(expected_mean, rel=1e-15)
        assert var == pytest.approx(expected_var, rel=1e-9) and var == pytest.approx(union.var().item(), rel=1e-4)
    # The one-pass formula the collectives used before, on the same numbers in the data's own precision:
    total, total_sq, n = union.sum(), union.pow(2).sum(), union.numel()
    one_pass = ((total_sq - total * total / n) / (n - 1)).item()
    assert abs(one_pass - expected_var) > 0.5 * expected_var, "this data would not have caught the cancellation"


def test_helpers_are_the_identity_with_one_process():
    values = torch.randn(10)
    assert distributed.world_size() == 1 and distributed.all_reduce_mean(values.clone()).equal(values)
    assert torch.equal(distributed.normalize(values), (values - values.mean()) / (values.std() + 1e-8))
    assert distributed.gather_objects("x") == ["x"] and distributed.broadcast_object(3) == 3
