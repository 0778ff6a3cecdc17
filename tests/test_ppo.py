"""PPO's clipped surrogate and value loss against their elementwise formulas, and one real update."""

import copy
import math
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch
from torch.distributions import Categorical

from rl.algos import ppo
from rl.policy import Agent
from rl.rollout import Batch

CLIP = 0.2
# ratio r, advantage A, and the per-element surrogate min(r A, clip(r, 1 - eps, 1 + eps) A) worked out by hand.
CASES = [
    # r     A     objective  clipped?
    (0.5, 2.0, 1.0, True),     # below 1 - eps, A > 0: the unclipped r A = 1.0 is the smaller one
    (0.5, -1.0, -0.8, True),   # below 1 - eps, A < 0: clipped 0.8 * -1
    (0.9, 2.0, 1.8, False),    # inside
    (1.0, -3.0, -3.0, False),  # inside, at r = 1
    (1.1, -1.0, -1.1, False),  # inside
    (1.5, 2.0, 2.4, True),     # above 1 + eps, A > 0: clipped 1.2 * 2
    (1.5, -1.0, -1.5, True),   # above 1 + eps, A < 0: the unclipped r A = -1.5 is the smaller one
    (2.0, 0.5, 0.6, True),     # above, A > 0: 1.2 * 0.5
]


def case_tensors():
    ratio = torch.tensor([c[0] for c in CASES], dtype=torch.float64)
    advantages = torch.tensor([c[1] for c in CASES], dtype=torch.float64)
    old_log_probs = torch.linspace(-2.0, -0.1, len(CASES), dtype=torch.float64)
    return old_log_probs + ratio.log(), old_log_probs, advantages


def test_policy_loss_matches_elementwise_formula():
    log_probs, old_log_probs, advantages = case_tensors()
    loss, approx_kl, clipfrac = ppo.policy_loss(log_probs, old_log_probs, advantages, CLIP)

    objective = [c[2] for c in CASES]
    for r, a, value, _ in CASES:  # the hand-written column agrees with min(r A, clip(r) A)
        assert value == pytest.approx(min(r * a, min(max(r, 1 - CLIP), 1 + CLIP) * a))
    assert loss.item() == pytest.approx(-sum(objective) / len(CASES), abs=1e-12)
    expected_kl = sum((r - 1.0) - math.log(r) for r, *_ in CASES) / len(CASES)
    assert approx_kl.item() == pytest.approx(expected_kl, abs=1e-12)
    assert clipfrac.item() == pytest.approx(sum(1 for c in CASES if c[3]) / len(CASES), abs=1e-12)


def test_policy_loss_gradient_vanishes_only_where_the_clip_is_active():
    log_probs, old_log_probs, advantages = case_tensors()
    log_probs.requires_grad_(True)
    loss, _, _ = ppo.policy_loss(log_probs, old_log_probs, advantages, CLIP)
    loss.backward()
    for i, (r, a, _, _) in enumerate(CASES):
        active = (a > 0 and r > 1 + CLIP) or (a < 0 and r < 1 - CLIP)
        # d/dlogp of -r A / n is -r A / n where the unclipped term is the one taken.
        expected = 0.0 if active else -r * a / len(CASES)
        assert log_probs.grad[i].item() == pytest.approx(expected, abs=1e-12), (r, a)


def test_value_loss_unclipped_and_clipped():
    old_values = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    values = torch.tensor([0.5, 0.1, -0.5, 1.3], dtype=torch.float64)
    returns = torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    unclipped = [(0.5 - 2.0) ** 2, (0.1 - 1.0) ** 2, (-0.5 - 1.0) ** 2, (1.3 - 0.0) ** 2]
    assert ppo.value_loss(values, old_values, returns).item() == pytest.approx(0.5 * sum(unclipped) / 4, abs=1e-12)

    # clip 0.2: predictions limited to old +- 0.2, i.e. 0.2, 0.1, -0.2, 1.2, and the larger error is kept.
    clipped = [(0.2 - 2.0) ** 2, (0.1 - 1.0) ** 2, (-0.2 - 1.0) ** 2, (1.2 - 0.0) ** 2]
    expected = 0.5 * sum(max(u, c) for u, c in zip(unclipped, clipped)) / 4
    assert expected != pytest.approx(0.5 * sum(unclipped) / 4)  # the clip really matters here
    assert ppo.value_loss(values, old_values, returns, 0.2).item() == pytest.approx(expected, abs=1e-12)


def ppo_config(**overrides):
    cfg = dict(learning_rate=1e-3, update_epochs=4, num_minibatches=2, normalize_advantages=True, clip_coef=0.2,
               clip_value_loss=True, entropy_coef=0.01, value_coef=0.5, max_grad_norm=0.5, target_kl=None,
               anneal_clip_coef=False, compile=False)
    cfg.update(overrides)
    return SimpleNamespace(**cfg)


def small_problem(seed=0, size=64):
    torch.manual_seed(seed)
    agent = Agent(gym.spaces.Box(-1.0, 1.0, (4,)), gym.spaces.Discrete(3), actor_hidden_sizes=(32,),
                  critic_hidden_sizes=(32,))
    obs = torch.randn(size, 4)
    with torch.no_grad():
        logits = agent.actor(obs)[0]
        dist = Categorical(logits=logits)
        actions = dist.sample()
        values = agent.critic(obs)
    advantages = torch.randn(size)
    batch = Batch(obs=obs, actions=actions, log_probs=dist.log_prob(actions), values=values,
                  advantages=advantages, returns=values + advantages)
    return agent, batch


def surrogate_and_value_loss(agent, batch):
    """Full-batch clipped surrogate (normalized advantages) and squared value error, from the formulas."""
    with torch.no_grad():
        ratio = (Categorical(logits=agent.actor(batch.obs)[0]).log_prob(batch.actions) - batch.log_probs).exp()
        adv = (batch.advantages - batch.advantages.mean()) / batch.advantages.std()
        surrogate = torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
        value_error = (agent.critic(batch.obs) - batch.returns).pow(2).mean()
    return -surrogate.item(), value_error.item()


def test_update_improves_the_objective_and_reports_metrics():
    agent, batch = small_problem()
    cfg = ppo_config()
    before = [p.detach().clone() for p in agent.parameters()]
    policy_before, value_before = surrogate_and_value_loss(agent, batch)

    metrics = ppo.update(agent, ppo.make_optimizers(agent, cfg), batch, cfg, torch.Generator().manual_seed(0))

    policy_after, value_after = surrogate_and_value_loss(agent, batch)
    assert policy_after < policy_before - 1e-3
    assert value_after < value_before
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.actor.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(before[len(list(agent.actor.parameters())):],
                                                     agent.critic.parameters()))
    expected_keys = {"losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
                     "losses/clipfrac", "losses/explained_variance", "losses/epochs"}
    assert set(metrics) == expected_keys
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["losses/epochs"] == cfg.update_epochs
    assert 0.0 < metrics["losses/entropy"] <= math.log(3) + 1e-6
    assert 0.0 <= metrics["losses/clipfrac"] <= 1.0
    # returns = values + advantages, so the explained variance of the collecting critic is 1 - Var A / Var R.
    expected_ev = 1.0 - batch.advantages.var() / batch.returns.var()
    assert metrics["losses/explained_variance"] == pytest.approx(expected_ev.item(), abs=1e-5)


def test_update_stops_early_when_kl_exceeds_target():
    agent, batch = small_problem(seed=1)
    cfg = ppo_config(update_epochs=10, target_kl=1e-9)
    metrics = ppo.update(agent, ppo.make_optimizers(agent, cfg), batch, cfg, torch.Generator().manual_seed(0))
    assert metrics["losses/epochs"] == 1


def test_annealed_clip_range_is_the_clip_range_times_the_fraction_left():
    runs = {}
    for name, cfg, fraction_left in (("annealed", ppo_config(anneal_clip_coef=True), 0.25),
                                     ("direct", ppo_config(clip_coef=0.05), 1.0),
                                     ("unannealed", ppo_config(), 0.25)):
        agent, batch = small_problem(seed=2)
        ppo.update(agent, ppo.make_optimizers(agent, cfg), batch, cfg, torch.Generator().manual_seed(0), fraction_left)
        runs[name] = [p.detach().clone() for p in agent.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(runs["annealed"], runs["direct"]))
    assert not all(torch.equal(a, b) for a, b in zip(runs["annealed"], runs["unannealed"]))


def test_update_equals_a_hand_written_ppo_loop():
    """Two epochs of two minibatches, replayed with torch.distributions, torch.optim.Adam (one over all the
    parameters) and torch.nn.utils.clip_grad_norm_: per-minibatch advantage normalization, the clipped value
    loss, the entropy and value coefficients and the global gradient clip, each as the PPO paper and
    openai/baselines' ppo2 define them."""
    agent, batch = small_problem(seed=2)
    agent, batch = agent.double(), Batch(**{k: (v.double() if v.is_floating_point() else v) for k, v in
                                            vars(batch).items() if isinstance(v, torch.Tensor)})
    cfg = ppo_config(update_epochs=2, num_minibatches=2, max_grad_norm=0.05)  # a clip that binds
    reference = copy.deepcopy(agent)
    ppo.update(agent, ppo.make_optimizers(agent, cfg), batch, cfg, torch.Generator().manual_seed(3))

    params = list(reference.actor.parameters()) + list(reference.critic.parameters())
    adam = torch.optim.Adam(params, lr=cfg.learning_rate, eps=1e-5)
    generator, size, clipped_norms = torch.Generator().manual_seed(3), len(batch.obs) // 2, []
    for _ in range(cfg.update_epochs):
        order = torch.randperm(len(batch.obs), generator=generator)  # one env: a plain shuffle of the batch
        for rows in (order[:size], order[size:]):
            dist = Categorical(logits=reference.actor(batch.obs[rows])[0])
            adv = batch.advantages[rows]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            ratio = (dist.log_prob(batch.actions[rows]) - batch.log_probs[rows]).exp()
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef) * adv).mean()
            values, old, target = reference.critic(batch.obs[rows]), batch.values[rows], batch.returns[rows]
            clipped = old + (values - old).clamp(-cfg.clip_coef, cfg.clip_coef)
            v_loss = 0.5 * torch.max((values - target) ** 2, (clipped - target) ** 2).mean()
            loss = -surrogate - cfg.entropy_coef * dist.entropy().mean() + cfg.value_coef * v_loss
            adam.zero_grad()
            loss.backward()
            clipped_norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))
            adam.step()
    assert min(clipped_norms) > cfg.max_grad_norm  # every step was clipped: the clip is checked too
    for ours, expected in zip(agent.parameters(), reference.parameters()):
        assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-12), (ours - expected).abs().max()
