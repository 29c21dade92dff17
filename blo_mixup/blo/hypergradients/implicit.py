"""The implicit-function hypergradients: H^-1 v from a truncated Neumann series (neumann), conjugate
gradient (cg; Betty 0.2.1's own CG is wrong) or the Nystrom approximation of H (nystrom), then one mixed
second derivative; and direct-only, which has no implicit part at all."""

import torch

from .registry import options_of
from .utils import (check_no_lower_problems, check_strategy, dot, double_backward, grads, hessian_vector_product,
                    lower_gradient_with_graph, mixed_product)


def neumann_inverse_hvp(vector, lower_grad, lower_params, iterations, alpha):
    """alpha * sum_{k=0..K} (I - alpha H)^k v, K = iterations (one Hessian-vector product each).

    Converges to H^-1 v when 0 < alpha * eigenvalue < 2 for every eigenvalue of H.
    """
    term = [v.detach() for v in vector]
    total = list(term)
    for _ in range(iterations):
        hvp = hessian_vector_product(lower_grad, lower_params, term)
        term = [t - alpha * h for t, h in zip(term, hvp)]
        total = [s + t for s, t in zip(total, term)]
    return [alpha * s for s in total]


def conjugate_gradient(vector, lower_grad, lower_params, iterations):
    """Solve H x = v by conjugate gradient from x = 0 (one Hessian-vector product per iteration).

    Standard CG: the new direction uses the NEW residual. It stops early on an exact solution, or on
    non-positive curvature (CG assumes H positive definite): then it keeps the current x, or falls
    back to x = v (the identity, as DARTS) if that happens at the first iteration.
    """
    v = [vi.detach() for vi in vector]
    x = [torch.zeros_like(vi) for vi in v]
    residual = list(v)
    direction = list(v)
    rr = float(dot(residual, residual))
    for k in range(iterations):
        if rr == 0.0:
            break
        h_direction = hessian_vector_product(lower_grad, lower_params, direction)
        curvature = float(dot(direction, h_direction))
        if not curvature > 0.0:
            if k == 0:
                x = list(v)
            break
        step = rr / curvature
        x = [xi + step * di for xi, di in zip(x, direction)]
        residual = [ri - step * hi for ri, hi in zip(residual, h_direction)]
        rr_new = float(dot(residual, residual))
        direction = [ri + (rr_new / rr) * di for ri, di in zip(residual, direction)]
        rr = rr_new
    return x


def neumann(vector, curr, prev, sync):
    """Implicit hypergradient with H^-1 v from a truncated Neumann series.

    Options: ``curr.config.neumann_iterations`` (Hessian-vector products), ``neumann_alpha``.
    """
    check_strategy(curr, "neumann")
    check_no_lower_problems(curr, "neumann")
    with double_backward("neumann"):
        lower_params, lower_grad = lower_gradient_with_graph(curr)
        config = curr.config
        x = neumann_inverse_hvp(vector, lower_grad, lower_params, config.neumann_iterations, config.neumann_alpha)
        return mixed_product(lower_grad, x, prev, sync)


def cg(vector, curr, prev, sync):
    """Implicit hypergradient with H^-1 v from a correct conjugate gradient.

    Option: ``curr.config.cg_iterations`` (Hessian-vector products). ``cg_alpha`` is not used: it
    only rescales H and H^-1 in Betty's version, which cancels out.
    """
    check_strategy(curr, "cg")
    check_no_lower_problems(curr, "cg")
    with double_backward("cg"):
        lower_params, lower_grad = lower_gradient_with_graph(curr)
        x = conjugate_gradient(vector, lower_grad, lower_params, curr.config.cg_iterations)
        return mixed_product(lower_grad, x, prev, sync)


def nystrom_inverse_hvp(vector, lower_grad, lower_params, rank, rho, generator):
    """(H_k + rho I)^-1 v, with H_k = C^T W^+ C the Nystrom approximation of H from `rank` of its rows,
    chosen at random without replacement (Hataya and Yamada, AISTATS 2023): C = H[K, :], W = H[K, K].

    One backward pass per chosen row (H is symmetric). With C^T = Q R (thin QR), H_k = Q S Q^T with
    S = R W^+ R^T, so (H_k + rho I)^-1 v = Q (S + rho I)^-1 Q^T v + (v - Q Q^T v) / rho: the paper's
    Woodbury form, written so that a small rho does not cancel two large terms. With every row (rank >=
    the number of weights) H_k = H, and rho -> 0 gives H^-1 v; outside the rows' span it acts as 1 / rho.
    """
    flat_grad = torch.cat([g.reshape(-1) for g in lower_grad])
    v = torch.cat([x.detach().reshape(-1) for x in vector])
    indices = torch.randperm(flat_grad.numel(), generator=generator)[:rank].to(v.device)
    rows = []
    for i in indices.tolist():
        entry = flat_grad[i]
        row = grads(entry, lower_params, retain_graph=True) if entry.requires_grad else map(torch.zeros_like, lower_params)
        rows.append(torch.cat([r.reshape(-1) for r in row]))
    c = torch.stack(rows)
    q, r = torch.linalg.qr(c.T)
    # the rank x rank part on the CPU in float64 (W may be singular or indefinite: its pseudo-inverse)
    r64, w64 = r.double().cpu(), c[:, indices].double().cpu()
    s = r64 @ torch.linalg.pinv(w64, hermitian=True) @ r64.T
    qv = q.T @ v
    inside = torch.linalg.solve(s + rho * torch.eye(len(s), dtype=s.dtype), qv.double().cpu())
    x = q @ inside.to(v) + (v - q @ qv) / rho
    return [part.view_as(p) for part, p in zip(torch.split(x, [p.numel() for p in lower_params]), lower_params)]


def nystrom(vector, curr, prev, sync):
    """Implicit hypergradient with H^-1 v from the Nystrom approximation of H (nystrom_inverse_hvp).

    Options (``options_of(curr)``): ``rank`` (rows of H, one backward pass each), ``rho`` (damping),
    ``seed``. The rows are drawn from a generator seeded by the seed and the lower step count, so a run
    is reproducible and its own random stream is left as it was.
    """
    check_strategy(curr, "nystrom")
    check_no_lower_problems(curr, "nystrom")
    options = options_of(curr)
    generator = torch.Generator().manual_seed(options["seed"] * 1_000_003 + getattr(curr, "_count", 0))
    with double_backward("nystrom"):
        lower_params, lower_grad = lower_gradient_with_graph(curr)
        x = nystrom_inverse_hvp(vector, lower_grad, lower_params, options["rank"], options["rho"], generator)
        return mixed_product(lower_grad, x, prev, sync)


def direct_only(vector, curr, prev, sync):
    """No implicit part: the upper level steps on its direct gradient alone (a control that shows whether
    the hypergradient matters). Betty still computes the vector; nothing is added to the upper gradient."""
    return None if sync else [torch.zeros_like(p) for p in prev.trainable_parameters()]
