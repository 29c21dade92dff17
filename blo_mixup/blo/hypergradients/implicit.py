"""The implicit-function hypergradients: H^-1 v from a truncated Neumann series (neumann) or from
conjugate gradient (cg; Betty 0.2.1's own CG is wrong), then one mixed second derivative."""

import torch

from .utils import (check_no_lower_problems, check_strategy, dot, double_backward, hessian_vector_product,
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
