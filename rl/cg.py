"""Conjugate gradient on a matrix given only as a matrix-vector product."""

import torch


def conjugate_gradient(matvec, b, max_iter, tol=1e-10, sync_free=None):
    """Solve A x = b for symmetric positive-definite A, starting from x = 0 (Hestenes & Stiefel 1952).

    Stops after `max_iter` products or once the residual norm ||b - A x|| <= tol. On the CPU the stop is
    checked every iteration; on an accelerator, reading the residual would force a host sync per
    iteration, so converged iterations are masked out on the device instead (the same x either way).
    `sync_free` forces one behaviour or the other (None: by the device of `b`).

    Returns (x, residual_norm, iterations); the last two are 0-d tensors.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    tol_sq = tol * tol
    iterations = torch.zeros((), dtype=torch.int64, device=b.device)
    if sync_free is None:
        sync_free = b.device.type != "cpu"
    for _ in range(max_iter):
        converged = rr <= tol_sq
        if not sync_free and bool(converged):
            break
        Ap = matvec(p)
        alpha = torch.where(converged, torch.zeros_like(rr), rr / (p @ Ap))
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        beta = torch.where(converged, torch.zeros_like(rr), rr_new / rr)
        p = torch.where(converged, p, r + beta * p)
        rr = torch.where(converged, rr, rr_new)
        iterations = iterations + (~converged).long()
    return x, rr.sqrt(), iterations
