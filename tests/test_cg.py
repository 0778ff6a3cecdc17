import torch

from rl.cg import conjugate_gradient


def random_spd(n, eigenvalues=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    if eigenvalues is None:
        eigenvalues = torch.rand(n, generator=generator, dtype=torch.float64) * 9 + 1  # condition <= 10
    return q @ torch.diag(eigenvalues) @ q.T


def counting(matrix):
    calls = []

    def matvec(v):
        calls.append(1)
        return matrix @ v

    return matvec, calls


def test_solves_random_spd_systems_against_direct_solve():
    for seed, n in [(0, 5), (1, 20), (2, 50)]:
        a = random_spd(n, seed=seed)
        b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100))
        x, residual, iterations = conjugate_gradient(lambda v: a @ v, b, max_iter=3 * n, tol=1e-12)
        expected = torch.linalg.solve(a, b)
        assert torch.allclose(x, expected, rtol=0, atol=1e-9), (x - expected).abs().max()
        assert residual <= 1e-12
        assert torch.linalg.norm(b - a @ x) <= 1e-10


def test_stops_early_at_tolerance():
    # A matrix with 3 distinct eigenvalues: exact CG converges in 3 iterations whatever n is.
    n = 30
    eigenvalues = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64).repeat(10)
    a = random_spd(n, eigenvalues, seed=3)
    b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    matvec, calls = counting(a)
    x, residual, iterations = conjugate_gradient(matvec, b, max_iter=25, tol=1e-8)
    assert int(iterations) == 3 and len(calls) == 3
    assert residual <= 1e-8
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)


def test_loose_tolerance_stops_sooner_with_residual_below_it():
    a = random_spd(40, seed=5)
    b = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    _, _, tight_iterations = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-12)
    x, residual, loose_iterations = conjugate_gradient(lambda v: a @ v, b, max_iter=100, tol=1e-2)
    assert int(loose_iterations) < int(tight_iterations)
    assert residual <= 1e-2
    # The reported residual is the true one, not a running estimate gone stale.
    assert torch.isclose(torch.linalg.norm(b - a @ x), residual, rtol=1e-6)


def test_iteration_cap_is_respected():
    a = random_spd(40, seed=7)
    b = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    matvec, calls = counting(a)
    _, residual, iterations = conjugate_gradient(matvec, b, max_iter=3, tol=1e-12)
    assert int(iterations) == 3 and len(calls) == 3
    assert residual > 1e-12


def test_zero_right_hand_side_gives_zero_without_products():
    a = random_spd(6, seed=9)
    matvec, calls = counting(a)
    x, residual, iterations = conjugate_gradient(matvec, torch.zeros(6, dtype=torch.float64), 10)
    assert torch.equal(x, torch.zeros(6, dtype=torch.float64))
    assert int(iterations) == 0 and len(calls) == 0 and float(residual) == 0.0


def test_sync_free_masking_gives_the_early_exit_result():
    # The accelerator path never leaves the loop early; masked iterations must not change x.
    n = 30
    a = random_spd(n, torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64).repeat(10), seed=10)
    b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    x_exit, res_exit, it_exit = conjugate_gradient(lambda v: a @ v, b, 25, 1e-8, sync_free=False)
    matvec, calls = counting(a)
    x_mask, res_mask, it_mask = conjugate_gradient(matvec, b, 25, 1e-8, sync_free=True)
    assert len(calls) == 25  # it did run every iteration
    assert int(it_mask) == int(it_exit) == 3
    assert torch.equal(x_mask, x_exit) and torch.equal(res_mask, res_exit)
