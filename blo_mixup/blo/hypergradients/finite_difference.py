"""The finite-difference hypergradients: darts-plain (the identity as inverse Hessian) and darts (the
official code's preconditioned DARTS). Both move the lower weights by +-eps along a vector, take the lower
gradient with respect to the upper parameters at both points, and restore the weights bitwise."""

import math

import torch

from ...errors import UserError
from .utils import capture_rng, check_strategy, dot, grads, lower_loss, restore_rng


def finite_difference(vector, curr, prev, sync, radius):
    """-(d/d lambda of dL_low/dw) . vector, by a central difference of the upper gradient.

    The lower weights W move to W +- eps * vector (eps = radius / |vector|), the lower loss's gradient
    with respect to the upper parameters is taken at both points, and the result is
    -(g+ - g-) / (2 eps). W is saved first and copied back at the end, so it is bitwise unchanged.
    ``.data`` is used so that graphs that saved W (the upper loss's) stay valid once W is restored.
    Both passes draw the same random numbers (dropout masks): otherwise the difference of two
    differently-masked gradients, divided by 2 eps, swamps the result (Betty's darts does that).
    """
    lower_params = curr.meta_trainable_parameters()
    upper_params = prev.trainable_parameters()
    norm = math.sqrt(float(dot(vector, vector)))
    eps = radius / (norm + 1e-15)  # a zero vector gives a zero result, as in Betty
    saved = [p.detach().clone() for p in lower_params]
    rng = capture_rng()
    try:
        for p, v in zip(lower_params, vector):
            p.data.add_(v, alpha=eps)
        grad_plus = grads(lower_loss(curr), upper_params)

        for p, w, v in zip(lower_params, saved, vector):
            p.data.copy_(w).add_(v, alpha=-eps)
        restore_rng(rng)
        loss_minus = lower_loss(curr)
        if sync:
            # Mirror Betty: the + part through set_grads, the - part through backward (DDP hooks).
            prev.set_grads(upper_params, [g / (-2 * eps) for g in grad_plus])
            torch.autograd.backward(loss_minus / (2 * eps), inputs=upper_params)
            return None
        grad_minus = grads(loss_minus, upper_params)
        return [(gm - gp) / (2 * eps) for gm, gp in zip(grad_minus, grad_plus)]
    finally:
        for p, w in zip(lower_params, saved):
            p.data.copy_(w)


def darts_plain(vector, curr, prev, sync):
    """DARTS finite difference read as implicit differentiation: the identity as inverse Hessian.

    Returns -(d2 L_low / d lambda d w) v, approximated by a central difference with radius
    ``curr.config.darts_alpha`` (the perturbation's norm in weight space).
    """
    check_strategy(curr, "darts-plain")
    return finite_difference(vector, curr, prev, sync, curr.config.darts_alpha)


def darts(vector, curr, prev, sync):
    """The official mixup code's hypergradient: Betty 0.2.0's DARTS with ``darts_preconditioned=True``.

    Returns -(d2 L_low / d lambda d w) (s v), where each weight tensor's part of v is scaled by one
    scalar s from the lower optimizer's state (``darts_preconditioner``), by the same central
    difference as ``darts_plain`` (radius ``curr.config.darts_alpha``, one dropout mask, weights
    restored bitwise).
    """
    check_strategy(curr, "darts")
    lower_params = curr.meta_trainable_parameters()
    optimizer = curr.optimizer
    scaled = [v * darts_preconditioner(optimizer, p) for p, v in zip(lower_params, vector)]
    return finite_difference(scaled, curr, prev, sync, curr.config.darts_alpha)


def darts_preconditioner(optimizer, param):
    """The scalar by which Betty 0.2.0's ``precondition`` multiplies this tensor's part of the vector.

    Adam-type optimizers (Adam, AdamW, and any optimizer with "adam" in its class name, "betas" in its
    groups and "exp_avg_sq" in its state, as Betty 0.2.0 matched them), with t the step count and v
    the second moment ``exp_avg_sq`` after the last step:

        s = sqrt(1 - beta2^t) / (sqrt(mean(beta2 * v)) + eps)          (mean over the whole tensor)

    i.e. about 1 / the root-mean-square over the tensor of sqrt(v / (1 - beta2^t)), Adam's
    bias-corrected denominator: no learning rate, no (1 - beta1). Betty 0.2.0 computes ``vector / denom`` with ``denom = (sqrt(mean(beta2 * v)) +
    eps) / sqrt(1 - beta2^t)``; the same number. A parameter the optimizer has not stepped gives 0
    (Betty 0.2.0 divides by sqrt(1 - beta2^0) = 0 there, which also gives 0), as does one the
    optimizer does not hold (the lower step does not move it).
    SGD: s = 1, as Betty 0.2.0 (it returns the vector unchanged for every non-Adam optimizer).
    Other optimizers: a UserError (Betty 0.2.0 would silently use the identity).
    """
    if isinstance(optimizer, torch.optim.SGD):
        return 1.0
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    adam_type = isinstance(optimizer, torch.optim.Adam) or "adam" in type(optimizer).__name__.lower()
    if not adam_type or (group is not None and "betas" not in group):
        raise UserError(
            f"the 'darts' hypergradient (the official code's preconditioned DARTS) supports Adam-type and "
            f"SGD lower optimizers, not {type(optimizer).__name__}; use 'darts-plain' (no preconditioning)"
        )
    if group is None:
        return 0.0  # not trained by this optimizer
    state = optimizer.state.get(param, {})
    step = float(state["step"]) if "step" in state else 0.0
    if step == 0:
        return 0.0
    if "exp_avg_sq" not in state:
        raise UserError(
            f"the 'darts' hypergradient reads Adam's second moment 'exp_avg_sq', which "
            f"{type(optimizer).__name__} does not keep; use 'darts-plain' (no preconditioning)"
        )
    beta2, eps = float(group["betas"][1]), group["eps"]
    with torch.no_grad():
        rms = (beta2 * state["exp_avg_sq"]).mean().sqrt()
        return math.sqrt(1 - beta2**step) / (rms + eps)
