"""The TRPO step against dense linear algebra and torch.distributions on a tiny float64 policy."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import Bernoulli, Categorical, Independent, Normal, kl_divergence
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from rl import results
from rl.algos import trpo
from rl.fisher import FISHER_VECTOR_PRODUCTS
from rl.rollout import Batch
from tests.test_fvp import ACTION_SPACES, KINDS, dense_kl_hessian, tiny_actor

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "algo"


def trpo_config(**overrides):
    cfg = OmegaConf.load(CONFIGS / "trpo.yaml")
    cfg.merge_with(overrides)
    return cfg


class IndependentCategoricals:
    """A MultiDiscrete action's distribution from torch.distributions: one Categorical per block."""

    def __init__(self, logits, sizes):
        self.parts = [Categorical(logits=block) for block in torch.split(logits, sizes, -1)]

    def sample(self):
        return torch.stack([part.sample() for part in self.parts], -1)

    def log_prob(self, actions):
        return sum(part.log_prob(actions[..., d]) for d, part in enumerate(self.parts))


def distribution(kind, outputs):
    """The policy's distribution per sample, log_prob (B,), from torch.distributions alone."""
    if kind == "gaussian":
        mean, log_std = outputs
        return Independent(Normal(mean, log_std.exp().expand_as(mean)), 1)
    if kind == "categorical":
        return Categorical(logits=outputs[0])
    if kind == "bernoulli":
        return Independent(Bernoulli(logits=outputs[0]), 1)
    return IndependentCategoricals(outputs[0], [int(n) for n in ACTION_SPACES[kind].nvec])


def kl_between(old, new):
    if isinstance(old, IndependentCategoricals):
        return sum(kl_divergence(o, n) for o, n in zip(old.parts, new.parts))
    return kl_divergence(old, new)


def make_batch(actor, kind, size=64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(size, 5, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        dist = distribution(kind, actor(obs))
        torch.manual_seed(seed)
        actions = dist.sample()
        log_probs = dist.log_prob(actions)
        actions = actions.long() if kind == "bernoulli" else actions  # 0/1 integers, as rl samples them
    advantages = torch.randn(size, dtype=torch.float64, generator=generator)
    zeros = torch.zeros(size, dtype=torch.float64)
    return Batch(obs, actions, log_probs, zeros, advantages, zeros)


def reference_surrogate(actor, kind, batch, advantages):
    """mean(pi/pi_old * A) with torch.distributions log-probabilities."""
    actions = batch.actions.double() if kind == "bernoulli" else batch.actions  # torch's Bernoulli takes floats
    log_probs = distribution(kind, actor(batch.obs)).log_prob(actions)
    return (torch.exp(log_probs - batch.log_probs) * advantages).mean()


def reference_kl(actor, kind, obs, old_dist):
    with torch.no_grad():
        kl = kl_between(old_dist, distribution(kind, actor(obs)))
    return float(kl.mean())


def gradient_of(actor, scalar):
    return parameters_to_vector(torch.autograd.grad(scalar, list(actor.parameters())))


@pytest.mark.parametrize("kind", KINDS)
def test_direction_matches_dense_solve_and_full_step_reaches_max_kl(kind):
    actor = tiny_actor(kind)
    batch = make_batch(actor, kind)
    n = parameters_to_vector(actor.parameters()).numel()
    cfg = trpo_config(cg_iters=4 * n, cg_tol=1e-13, cg_damping=0.1, max_kl=0.01)

    gradient = gradient_of(actor, reference_surrogate(actor, kind, batch, batch.advantages))
    ours = gradient_of(actor, trpo.surrogate(actor, actor(batch.obs), batch.actions, batch.log_probs,
                                             batch.advantages))
    assert torch.allclose(ours, gradient, rtol=1e-10, atol=1e-13)

    hessian = dense_kl_hessian(actor, kind, batch.obs)
    expected = torch.linalg.solve(hessian + cfg.cg_damping * torch.eye(n, dtype=torch.float64), gradient)
    direction, fisher_product, residual, _ = trpo.natural_direction(actor, batch.obs, gradient, cfg)
    assert torch.allclose(direction, expected, rtol=1e-7, atol=1e-9), (direction - expected).abs().max()
    assert residual <= 1e-13

    step = trpo.trust_region_step(direction, fisher_product, cfg.max_kl)
    assert torch.isclose(step @ hessian @ step / 2, torch.tensor(cfg.max_kl, dtype=torch.float64), rtol=1e-9)
    # step_curvature=damped: the boundary of the damped model, a shorter step in the same direction.
    damped = trpo.trust_region_step(direction, fisher_product, cfg.max_kl, cfg.cg_damping)
    damped_hessian = hessian + cfg.cg_damping * torch.eye(n, dtype=torch.float64)
    assert torch.isclose(damped @ damped_hessian @ damped / 2, torch.tensor(cfg.max_kl, dtype=torch.float64),
                         rtol=1e-9)
    assert damped.norm() < step.norm() and torch.allclose(damped / damped.norm(), step / step.norm())


def test_relative_cg_residual_is_the_dense_residual_over_the_gradient_norm():
    actor = tiny_actor("gaussian", seed=2)
    batch = make_batch(actor, "gaussian", size=256, seed=3)
    cfg = trpo_config(cg_iters=3, normalize_advantages=False)  # stopped early: a residual worth measuring
    n = parameters_to_vector(actor.parameters()).numel()
    gradient = gradient_of(actor, reference_surrogate(actor, "gaussian", batch, batch.advantages))
    damped = dense_kl_hessian(actor, "gaussian", batch.obs) + cfg.cg_damping * torch.eye(n, dtype=torch.float64)
    direction = trpo.natural_direction(actor, batch.obs, gradient.detach(), cfg)[0]
    expected = float((gradient - damped @ direction).norm() / gradient.norm())

    metrics = trpo.policy_step(actor, batch, cfg)
    assert 1e-3 < expected < 1
    assert metrics["trpo/cg_relative_residual"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_accepted_step_keeps_kl_below_max_and_improves(kind):
    actor = tiny_actor(kind, seed=2)
    batch = make_batch(actor, kind, size=256, seed=3)
    cfg = trpo_config(max_kl=0.01, normalize_advantages=False)
    with torch.no_grad():
        old_dist = distribution(kind, actor(batch.obs))
        old_surrogate = reference_surrogate(actor, kind, batch, batch.advantages)
    metrics = trpo.policy_step(actor, batch, cfg)

    assert metrics["trpo/line_search_steps"] >= 0
    measured = reference_kl(actor, kind, batch.obs, old_dist)
    assert 0 < measured <= cfg.max_kl
    assert metrics["trpo/kl"] == pytest.approx(measured, rel=1e-9)
    with torch.no_grad():
        improvement = float(reference_surrogate(actor, kind, batch, batch.advantages) - old_surrogate)
    assert improvement > 0
    assert metrics["trpo/surrogate_improvement"] == pytest.approx(improvement, rel=1e-9)
    if kind == "gaussian":  # the std's own share of the KL, by torch.distributions, and no more than all of it
        old_std, new_std = old_dist.base_dist.scale[0], actor(batch.obs)[1][0].exp().detach()
        expected = kl_divergence(torch.distributions.Normal(torch.zeros_like(old_std), old_std),
                                 torch.distributions.Normal(torch.zeros_like(new_std), new_std)).sum()
        assert metrics["trpo/kl_from_std"] == pytest.approx(float(expected), rel=1e-9, abs=1e-15)
        assert 0 < metrics["trpo/kl_from_std"] < metrics["trpo/kl"]
    else:
        assert "trpo/kl_from_std" not in metrics


def _line_search_setup(kind, seed):
    actor = tiny_actor(kind, seed=seed)
    batch = make_batch(actor, kind, size=128, seed=seed + 1)
    cfg = trpo_config(max_kl=0.01, line_search_max_steps=15)
    gradient = gradient_of(actor, reference_surrogate(actor, kind, batch, batch.advantages))
    direction, fisher_product, _, _ = trpo.natural_direction(actor, batch.obs, gradient, cfg)
    step = trpo.trust_region_step(direction, fisher_product, cfg.max_kl)
    old_flat = parameters_to_vector(actor.parameters()).detach().clone()
    with torch.no_grad():
        old_dist = distribution(kind, actor(batch.obs))
        old_surrogate = reference_surrogate(actor, kind, batch, batch.advantages)

    def evaluate():  # independent of the code under test
        with torch.no_grad():
            improvement = reference_surrogate(actor, kind, batch, batch.advantages) - old_surrogate
        return torch.tensor(reference_kl(actor, kind, batch.obs, old_dist)), improvement

    return actor, cfg, gradient, step, old_flat, evaluate


@pytest.mark.parametrize("kind", KINDS)
def test_line_search_shrinks_a_step_that_violates_the_constraint(kind):
    actor, cfg, gradient, step, old_flat, evaluate = _line_search_setup(kind, seed=4)
    full_step = 4.0 * step  # about 16x the KL budget in the quadratic model
    vector_to_parameters(old_flat + full_step, actor.parameters())
    assert float(evaluate()[0]) > cfg.max_kl  # the full step really violates the constraint

    steps, kl, _ = trpo.line_search(actor, old_flat, full_step, float(gradient @ full_step), evaluate, cfg)
    assert steps > 0
    accepted = old_flat + cfg.line_search_shrink ** steps * full_step
    assert torch.allclose(parameters_to_vector(actor.parameters()), accepted, rtol=0, atol=1e-15)
    assert float(evaluate()[0]) <= cfg.max_kl and kl <= cfg.max_kl
    # The candidate just before was rejected for a reason.
    vector_to_parameters(old_flat + cfg.line_search_shrink ** (steps - 1) * full_step, actor.parameters())
    kl_before, improvement_before = evaluate()
    expected_before = cfg.line_search_accept_ratio * cfg.line_search_shrink ** (steps - 1) * float(gradient @ full_step)
    assert float(kl_before) > cfg.max_kl or float(improvement_before) < max(expected_before, 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_no_improving_step_keeps_theta_old_bit_exact(kind):
    actor, cfg, gradient, step, old_flat, evaluate = _line_search_setup(kind, seed=6)
    before = [p.detach().clone() for p in actor.parameters()]
    backwards = -step  # every candidate lowers the surrogate
    steps, kl, improvement = trpo.line_search(actor, old_flat, backwards, float(gradient @ backwards), evaluate, cfg)
    assert (steps, kl, improvement) == (-1, 0.0, 0.0)
    assert all(torch.equal(p, q) for p, q in zip(actor.parameters(), before))


def test_npg_takes_the_fixed_step_along_the_natural_direction():
    actor = tiny_actor("gaussian", seed=8)
    batch = make_batch(actor, "gaussian", seed=9)
    n = parameters_to_vector(actor.parameters()).numel()
    cfg = trpo_config(name="npg", step_size=0.3, normalize_advantages=False, cg_iters=4 * n, cg_tol=1e-13)
    gradient = gradient_of(actor, reference_surrogate(actor, "gaussian", batch, batch.advantages))
    hessian = dense_kl_hessian(actor, "gaussian", batch.obs)
    direction = torch.linalg.solve(hessian + cfg.cg_damping * torch.eye(n, dtype=torch.float64), gradient)
    before = parameters_to_vector(actor.parameters()).detach().clone()
    metrics = trpo.policy_step(actor, batch, cfg)
    assert torch.allclose(parameters_to_vector(actor.parameters()), before + 0.3 * direction, rtol=0, atol=1e-9)
    assert metrics["trpo/line_search_steps"] == 0


def test_fvp_subsample_uses_a_share_of_the_batch():
    actor = tiny_actor("categorical", seed=10)
    batch = make_batch(actor, "categorical", size=100, seed=11)
    cfg = trpo_config(fvp_subsample=0.25, cg_iters=1)
    vector = torch.randn(parameters_to_vector(actor.parameters()).numel(), dtype=torch.float64)
    _, product, _, _ = trpo.natural_direction(actor, batch.obs, vector, cfg, torch.Generator().manual_seed(5))
    chosen = torch.randperm(100, generator=torch.Generator().manual_seed(5))[:25]
    expected = FISHER_VECTOR_PRODUCTS["analytic"](actor, batch.obs[chosen])(vector)
    full = FISHER_VECTOR_PRODUCTS["analytic"](actor, batch.obs)(vector)
    assert torch.allclose(product(vector), expected, atol=1e-13)
    assert not torch.allclose(product(vector), full, atol=1e-6)


@pytest.mark.slow
def test_cli_trpo_hopper_keeps_every_step_inside_the_trust_region(tmp_path):
    run_dir = tmp_path / "hopper"
    results.train(run_dir, "algo=trpo", "env=Hopper-v4", "total_timesteps=20480", "eval_episodes=2",
                  cwd=CONFIGS.parents[1], timeout=1200)
    logged = results.scalars(run_dir, wall_clock=True)
    kls = [value for _, value in logged["trpo/kl"]]
    steps = [value for _, value in logged["trpo/line_search_steps"]]
    assert len(kls) == 20480 // 2048
    assert all(kl <= 0.01 for kl in kls), kls
    assert any(s >= 0 for s in steps) and all(kl > 0 for kl, s in zip(kls, steps) if s >= 0)
    for tag in ("trpo/surrogate_improvement", "trpo/expected_improvement", "trpo/step_norm", "trpo/cg_residual",
                "trpo/cg_iterations", "losses/value_loss", "losses/entropy", "losses/explained_variance",
                "charts/episodic_return", "charts/sps", "time/rollout_seconds", "time/update_seconds"):
        assert logged.get(tag), tag
