"""rl.optim: the gradient step computes what torch's zero_grad / clip_grad_norm_ / step sequence does, bit for
bit (runs stay identical to those made through torch's helpers)."""

import copy

import pytest
import torch
from torch import nn

from rl.optim import clip_grad_norm, gradient_step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("max_norm", [0.05, 0.5, 1e6])  # clipped hard, clipped a little, not at all
def test_clip_grad_norm_is_torchs_bit_for_bit(dtype, max_norm):
    torch.manual_seed(0)
    grads = [torch.randn(64, 11, dtype=dtype), torch.randn(64, dtype=dtype) * 3, torch.randn(3, 64, dtype=dtype),
             torch.randn(1, dtype=dtype) * 1e-4]
    originals = [g.clone() for g in grads]
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for param, grad in zip(params, grads):
        param.grad = grad.clone()
    expected = nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    norm = clip_grad_norm(grads, max_norm)
    assert norm.item() == expected.item()
    for param, grad in zip(params, grads):
        assert torch.equal(param.grad, grad)
    # The independent formula: the norm of all entries as one vector, scaled down to max_norm when above it.
    assert norm.item() == pytest.approx(torch.cat([g.flatten() for g in originals]).norm().item(), rel=1e-5)
    after = torch.cat([p.grad.flatten() for p in params]).norm().item()
    assert after == pytest.approx(min(norm.item(), max_norm), rel=1e-5)


def test_gradient_step_equals_torchs_sequence():
    torch.manual_seed(1)
    nets = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
    other = copy.deepcopy(nets)
    x = torch.randn(32, 5)

    def optimizers(net):
        return [torch.optim.Adam(net[0].parameters(), lr=1e-2, fused=True),
                torch.optim.Adam(net[2].parameters(), lr=1e-2, fused=True)]

    ours, theirs = optimizers(nets), optimizers(other)
    for _ in range(5):
        gradient_step(nets(x).pow(2).sum() * 10, list(nets.parameters()), ours, max_grad_norm=0.5)
        for optimizer in theirs:
            optimizer.zero_grad(set_to_none=True)
        (other(x).pow(2).sum() * 10).backward()
        nn.utils.clip_grad_norm_(list(other.parameters()), 0.5, foreach=True)
        for optimizer in theirs:
            optimizer.step()
    for a, b in zip(nets.parameters(), other.parameters()):
        assert torch.equal(a, b)
