"""Hypergradient methods for Betty, registered under blo_mixup's own names.

Betty finds the function that multiplies a vector by the best-response Jacobian at call time, in
``betty.hypergradient.jvp_fn_mapping[lower.config.type]``, and calls it as
``fn(vector, curr, prev, sync)``: ``curr`` is the LOWER problem (its Config holds the method and its
options), ``prev`` the upper problem, ``vector`` the upper loss's gradient with respect to the lower
weights (aligned with ``curr.meta_trainable_parameters()``). Each function returns the implicit part
of the upper gradient, aligned with ``prev.trainable_parameters()``; with ``sync`` True it adds that
part to the upper parameters' ``.grad`` itself and returns None, as Betty's own functions do.

Importing this module registers the project's methods (idempotent):

    user name    registered type   computes  -(d2 L_low / d lambda d w) . x   with x =
    darts        blo_darts         s v: one scalar s per weight tensor, from the lower optimizer's
                                   state (the official code's preconditioned DARTS, Betty 0.2.0;
                                   Adam: s = 1 / RMS of the bias-corrected second moment; SGD: 1)
    darts-plain  blo_darts_plain   v                               (identity as inverse Hessian)
    sama         blo_sama          P v             (P = d(optimizer update)/d(gradient), exact)
    neumann      blo_neumann       alpha sum_k (I - alpha H)^k v   (truncated Neumann series)
    cg           blo_cg            H^-1 v by conjugate gradient    (Betty 0.2.1's CG is wrong)

``hypergradient_config(name, ...)`` returns the LOWER problem's Betty Config for a method. The
finite-difference methods (darts, darts-plain, sama) save the lower weights and restore them
bitwise, where Betty's add-then-subtract drifts by rounding. See docs/hypergradients.md.
"""

import math
import re
from contextlib import contextmanager
from dataclasses import fields

import torch
import betty.hypergradient
from betty.configs import Config

from .errors import UserError, did_you_mean, unknown_choice

HYPERGRADIENTS = ("darts", "darts-plain", "neumann", "cg", "sama")

# Betty's Config.type values for the user names; Betty's own "darts", "cg", ... stay untouched.
REGISTERED_NAMES = {
    "darts": "blo_darts",
    "darts-plain": "blo_darts_plain",
    "neumann": "blo_neumann",
    "cg": "blo_cg",
    "sama": "blo_sama",
}

# Defaults of hypergradient_config; None marks an option the method does not take.
DEFAULTS = {
    "darts": {"iterations": None, "alpha": None, "radius": 0.01},
    "darts-plain": {"iterations": None, "alpha": None, "radius": 0.01},
    "sama": {"iterations": None, "alpha": None, "radius": 0.01},
    "neumann": {"iterations": 3, "alpha": 0.01, "radius": None},
    "cg": {"iterations": 3, "alpha": None, "radius": None},
}

_WHY_NOT = {
    "iterations": "it has no iterations (only neumann and cg do)",
    "alpha": "it has no step size (only neumann does; CG needs none)",
    "radius": "it has no finite-difference radius (only darts, darts-plain and sama do)",
}

# Config fields hypergradient_config sets itself, and Betty features these functions do not support.
_MANAGED_FIELDS = {
    "type", "unroll_steps", "darts_alpha", "sama_adam_alpha", "neumann_iterations",
    "neumann_alpha", "cg_iterations", "cg_alpha",
}
_UNSUPPORTED_FIELDS = {"darts_multitask", "sama_multitask"}


# ----------------------------------------------------------------------------------------------
# small helpers


def _lower_loss(problem):
    """The problem's loss on its last batch, at its current weights (a dict's "loss" entry too)."""
    out = problem.training_step_exec(problem.cur_batch)
    return out["loss"] if isinstance(out, dict) else out


def _grads(outputs, inputs, grad_outputs=None, **kwargs):
    """torch.autograd.grad with zeros for inputs the outputs do not depend on."""
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, inputs)]


def _dot(xs, ys):
    return sum((x * y).sum() for x, y in zip(xs, ys))


def _capture_rng():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _restore_rng(state):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _check_strategy(problem, method):
    if problem._strategy in ("fsdp", "zero"):
        raise UserError(
            f"the '{method}' hypergradient does not support Betty's '{problem._strategy}' strategy; "
            "use strategy 'default', 'cpu', 'gpu' or 'distributed'"
        )


def _check_no_lower_problems(problem, method):
    # Second-order methods need the lower problem's weights to be a plain argmin (Betty asserts too).
    if len(problem.paths) > 0:
        raise UserError(
            f"the '{method}' hypergradient cannot sit on problem '{problem.name}', which has lower "
            "problems of its own; use 'darts-plain' (or 'darts') for a middle level"
        )


# ----------------------------------------------------------------------------------------------
# finite differences: darts, darts-plain and sama


def _finite_difference(vector, curr, prev, sync, radius):
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
    norm = math.sqrt(float(_dot(vector, vector)))
    eps = radius / (norm + 1e-15)  # a zero vector gives a zero result, as in Betty
    saved = [p.detach().clone() for p in lower_params]
    rng = _capture_rng()
    try:
        for p, v in zip(lower_params, vector):
            p.data.add_(v, alpha=eps)
        grad_plus = _grads(_lower_loss(curr), upper_params)

        for p, w, v in zip(lower_params, saved, vector):
            p.data.copy_(w).add_(v, alpha=-eps)
        _restore_rng(rng)
        loss_minus = _lower_loss(curr)
        if sync:
            # Mirror Betty: the + part through set_grads, the - part through backward (DDP hooks).
            prev.set_grads(upper_params, [g / (-2 * eps) for g in grad_plus])
            torch.autograd.backward(loss_minus / (2 * eps), inputs=upper_params)
            return None
        grad_minus = _grads(loss_minus, upper_params)
        return [(gm - gp) / (2 * eps) for gm, gp in zip(grad_minus, grad_plus)]
    finally:
        for p, w in zip(lower_params, saved):
            p.data.copy_(w)


def darts_plain(vector, curr, prev, sync):
    """DARTS finite difference read as implicit differentiation: the identity as inverse Hessian.

    Returns -(d2 L_low / d lambda d w) v, approximated by a central difference with radius
    ``curr.config.darts_alpha`` (the perturbation's norm in weight space).
    """
    _check_strategy(curr, "darts-plain")
    return _finite_difference(vector, curr, prev, sync, curr.config.darts_alpha)


def darts(vector, curr, prev, sync):
    """The official mixup code's hypergradient: Betty 0.2.0's DARTS with ``darts_preconditioned=True``.

    Returns -(d2 L_low / d lambda d w) (s v), where each weight tensor's part of v is scaled by one
    scalar s from the lower optimizer's state (``darts_preconditioner``), by the same central
    difference as ``darts_plain`` (radius ``curr.config.darts_alpha``, one dropout mask, weights
    restored bitwise).
    """
    _check_strategy(curr, "darts")
    lower_params = curr.meta_trainable_parameters()
    optimizer = curr.optimizer
    scaled = [v * darts_preconditioner(optimizer, p) for p, v in zip(lower_params, vector)]
    return _finite_difference(scaled, curr, prev, sync, curr.config.darts_alpha)


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


def sama(vector, curr, prev, sync):
    """SAMA (Choe et al., 2023): DARTS's finite difference on the preconditioned vector P v.

    P is the diagonal derivative of the lower optimizer's last update with respect to the gradient
    (Adam/AdamW: exact, with bias corrections; SGD: lr), recorded by an optimizer step hook (see
    ``prepare_sama``). Radius: ``curr.config.sama_adam_alpha``.
    """
    _check_strategy(curr, "sama")
    tracker = prepare_sama(curr)
    lower_params = curr.meta_trainable_parameters()
    preconditioned = [v * tracker.derivative(p) for p, v in zip(lower_params, vector)]
    return _finite_difference(preconditioned, curr, prev, sync, curr.config.sama_adam_alpha)


class UpdateDerivativeTracker:
    """Records, before each optimizer step, d(update)/d(gradient) for every parameter.

    The update is what the step subtracts from the parameter. Betty records the last gradient only
    when ``config.type == "sama"`` and rebuilds the moments from it; a step pre-hook sees the moments,
    gradient, step count and learning rate that the step actually uses, whatever the type's name.
    """

    def __init__(self, optimizer):
        for group in optimizer.param_groups:
            _check_sama_optimizer(optimizer, group)
        self.optimizer = optimizer
        self.derivatives = {}
        self.handle = optimizer.register_step_pre_hook(self._record)

    def _record(self, optimizer, args, kwargs):
        self.derivatives = {}
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self.derivatives[p] = _update_derivative(optimizer, group, p)

    def derivative(self, param):
        """The recorded derivative, or an estimate from the optimizer's state before any record."""
        if param in self.derivatives:
            return self.derivatives[param]
        group = next((g for g in self.optimizer.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            return 0.0  # not trained by this optimizer: the lower step does not move it
        with torch.no_grad():
            return _update_derivative_from_state(self.optimizer, group, param)


def prepare_sama(problem):
    """Install (once) the step hook that SAMA needs on ``problem.optimizer``; return its tracker.

    ``sama`` calls this itself, so its first call (before any step was recorded) estimates P from
    the optimizer state without the last gradient. Call it on the lower problem after building the
    Engine (Betty rebuilds optimizers there) to make the first call exact too.
    """
    optimizer = problem.optimizer
    tracker = getattr(optimizer, "_blo_mixup_update_derivatives", None)
    if tracker is None:
        tracker = UpdateDerivativeTracker(optimizer)
        optimizer._blo_mixup_update_derivatives = tracker
    return tracker


def _check_sama_optimizer(optimizer, group):
    if isinstance(optimizer, torch.optim.Adam):  # AdamW too (a subclass)
        if group.get("amsgrad") or group.get("maximize"):
            raise UserError(
                "the 'sama' hypergradient does not support Adam with amsgrad=True or maximize=True; "
                "use plain Adam/AdamW or the 'darts' hypergradient"
            )
    elif isinstance(optimizer, torch.optim.SGD):
        if group.get("maximize"):
            raise UserError("the 'sama' hypergradient does not support SGD(maximize=True); use 'darts'")
    else:
        raise UserError(
            f"the 'sama' hypergradient supports Adam, AdamW and SGD lower optimizers, not "
            f"{type(optimizer).__name__}; change the lower optimizer or use 'darts-plain'"
        )


def _sgd_derivative(group, first_step):
    # update = lr * (g + momentum buffer terms): linear in g.
    lr, momentum, dampening = float(group["lr"]), group["momentum"], group["dampening"]
    if momentum == 0:
        return lr
    carried = 1.0 if first_step else 1.0 - dampening  # the first step sets the buffer to g
    return lr * (1.0 + momentum * carried) if group["nesterov"] else lr * carried


def _update_derivative(optimizer, group, p):
    """d(update)/d(grad) for the step about to run, exactly as torch's Adam/SGD compute it."""
    state = optimizer.state.get(p, {})
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd_derivative(group, "momentum_buffer" not in state)
    beta1, beta2 = (float(b) for b in group["betas"])
    lr, eps = float(group["lr"]), group["eps"]
    grad = p.grad.detach()
    if group["weight_decay"] != 0 and not group.get("decoupled_weight_decay", False):
        grad = grad + group["weight_decay"] * p.detach()
    step = float(state["step"]) + 1 if "step" in state else 1.0
    exp_avg = state.get("exp_avg", torch.zeros_like(grad))
    exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(grad))
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    bias1, bias2 = 1 - beta1**step, 1 - beta2**step
    # update = lr/bias1 * m / (s + eps) with s = sqrt(v/bias2); ds/dg = (1-beta2) g / (bias2 s).
    s = (v / bias2).sqrt()
    denom = s + eps
    s_safe = torch.where(s > 0, s, torch.ones_like(s))  # s == 0 only where g == 0: term is 0
    return (lr / bias1) * ((1 - beta1) / denom - (1 - beta2) * grad * m / (bias2 * s_safe * denom**2))


def _update_derivative_from_state(optimizer, group, p):
    """Estimate after the step, without the last gradient: Adam's first term only."""
    state = optimizer.state.get(p, {})
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd_derivative(group, False)
    if "exp_avg_sq" not in state:
        return 0.0  # Adam has not stepped this parameter
    beta1, beta2 = (float(b) for b in group["betas"])
    step = float(state["step"])
    s = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt()
    return float(group["lr"]) / (1 - beta1**step) * (1 - beta1) / (s + group["eps"])


# ----------------------------------------------------------------------------------------------
# second-order methods: neumann and cg


def _lower_gradient_with_graph(curr):
    """dL_low/dw on the lower's last batch, with a graph for second derivatives."""
    lower_params = curr.meta_trainable_parameters()
    return lower_params, _grads(_lower_loss(curr), lower_params, create_graph=True)


def _hessian_vector_product(lower_grad, lower_params, vector):
    # Entries of the gradient with no graph (constant in w) contribute nothing to H v.
    pairs = [(g, v) for g, v in zip(lower_grad, vector) if g.requires_grad]
    if not pairs:
        return [torch.zeros_like(p) for p in lower_params]
    outputs, grad_outputs = zip(*pairs)
    return _grads(outputs, lower_params, grad_outputs=grad_outputs, retain_graph=True)


def _mixed_product(lower_grad, x, prev, sync):
    """-(d/d lambda of dL_low/dw) . x: one more backward through the lower gradient's graph."""
    upper_params = prev.trainable_parameters()
    pairs = [(g, xi) for g, xi in zip(lower_grad, x) if g.requires_grad]
    if not pairs:
        return None if sync else [torch.zeros_like(p) for p in upper_params]
    outputs, xs = zip(*pairs)
    if sync:
        torch.autograd.backward(outputs, grad_tensors=[-xi for xi in xs], inputs=upper_params)
        return None
    return [-g for g in _grads(outputs, upper_params, grad_outputs=xs)]


def neumann_inverse_hvp(vector, lower_grad, lower_params, iterations, alpha):
    """alpha * sum_{k=0..K} (I - alpha H)^k v, K = iterations (one Hessian-vector product each).

    Converges to H^-1 v when 0 < alpha * eigenvalue < 2 for every eigenvalue of H.
    """
    term = [v.detach() for v in vector]
    total = list(term)
    for _ in range(iterations):
        hvp = _hessian_vector_product(lower_grad, lower_params, term)
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
    rr = float(_dot(residual, residual))
    for k in range(iterations):
        if rr == 0.0:
            break
        h_direction = _hessian_vector_product(lower_grad, lower_params, direction)
        curvature = float(_dot(direction, h_direction))
        if not curvature > 0.0:
            if k == 0:
                x = list(v)
            break
        step = rr / curvature
        x = [xi + step * di for xi, di in zip(x, direction)]
        residual = [ri - step * hi for ri, hi in zip(residual, h_direction)]
        rr_new = float(_dot(residual, residual))
        direction = [ri + (rr_new / rr) * di for ri, di in zip(residual, direction)]
        rr = rr_new
    return x


# What autograd says when a layer has no second derivative (fused attention kernels, CuDNN RNNs,
# once_differentiable Functions).
_NO_DOUBLE_BACKWARD = re.compile(r"double backward|derivative for .* is not implemented|differentiate twice", re.I)


@contextmanager
def _double_backward(method):
    """Turn autograd's 'no second derivative' RuntimeError into a UserError naming the fix."""
    try:
        yield
    except RuntimeError as error:
        if not _NO_DOUBLE_BACKWARD.search(str(error)):
            raise
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"the '{method}' hypergradient needs second derivatives, which this model lacks ({reason}); "
            "use --hypergradient darts, darts-plain or sama, or load the model with attn_implementation=\"eager\""
        ) from error


def neumann(vector, curr, prev, sync):
    """Implicit hypergradient with H^-1 v from a truncated Neumann series.

    Options: ``curr.config.neumann_iterations`` (Hessian-vector products), ``neumann_alpha``.
    """
    _check_strategy(curr, "neumann")
    _check_no_lower_problems(curr, "neumann")
    with _double_backward("neumann"):
        lower_params, lower_grad = _lower_gradient_with_graph(curr)
        config = curr.config
        x = neumann_inverse_hvp(vector, lower_grad, lower_params, config.neumann_iterations, config.neumann_alpha)
        return _mixed_product(lower_grad, x, prev, sync)


def cg(vector, curr, prev, sync):
    """Implicit hypergradient with H^-1 v from a correct conjugate gradient.

    Option: ``curr.config.cg_iterations`` (Hessian-vector products). ``cg_alpha`` is not used: it
    only rescales H and H^-1 in Betty's version, which cancels out.
    """
    _check_strategy(curr, "cg")
    _check_no_lower_problems(curr, "cg")
    with _double_backward("cg"):
        lower_params, lower_grad = _lower_gradient_with_graph(curr)
        x = conjugate_gradient(vector, lower_grad, lower_params, curr.config.cg_iterations)
        return _mixed_product(lower_grad, x, prev, sync)


# ----------------------------------------------------------------------------------------------
# registration and configuration

_FUNCTIONS = {"darts": darts, "darts-plain": darts_plain, "neumann": neumann, "cg": cg, "sama": sama}


def register():
    """Put the methods into Betty's jvp_fn_mapping under their registered names (idempotent)."""
    for name, registered in REGISTERED_NAMES.items():
        betty.hypergradient.jvp_fn_mapping[registered] = _FUNCTIONS[name]


register()


def _method_name(name):
    key = str(name).strip().lower()
    if key in REGISTERED_NAMES:
        return key
    for user_name, registered in REGISTERED_NAMES.items():
        if key == registered:
            return user_name
    raise unknown_choice("hypergradient", name, HYPERGRADIENTS)


def needs_double_backward(name):
    """True for methods that take second derivatives (neumann, cg).

    Their models must support double backward: load transformers models with
    ``attn_implementation="eager"`` (the fused attention kernels have no double backward on CPU).
    """
    return _method_name(name) in ("neumann", "cg")


def _positive_int(value, option, method):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give a whole number >= 1")
    return value


def _positive_float(value, option, method):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give a number > 0")
    return float(value)


def hypergradient_config(name, *, iterations=None, alpha=None, radius=None, unroll_steps=1, **betty_kwargs):
    """The LOWER problem's Betty Config for hypergradient method ``name``.

    name: "darts" | "darts-plain" | "neumann" | "cg" | "sama" (case-insensitive).
    iterations: neumann, cg: Hessian-vector products per hypergradient (default 3).
    alpha: neumann only: series step, needs 0 < alpha * eig(H) < 2 (default 0.01).
    radius: darts, darts-plain, sama: norm of the finite-difference probe in weight space (default 0.01).
    unroll_steps: lower steps per upper step (default 1).
    betty_kwargs: other Config fields (gradient_clipping, precision, log_step, ...).
    An option the method does not take, a non-positive value, or an unknown field is a UserError.
    """
    method = _method_name(name)
    given = {"iterations": iterations, "alpha": alpha, "radius": radius}
    for option, value in given.items():
        if value is not None and DEFAULTS[method][option] is None:
            raise UserError(f"{option}={value!r} does not apply to the '{method}' hypergradient: "
                            f"{_WHY_NOT[option]}; leave {option} unset")
    settings = {k: DEFAULTS[method][k] if v is None else v for k, v in given.items()}

    config_fields = {f.name for f in fields(Config)}
    for key, value in betty_kwargs.items():
        if key in _MANAGED_FIELDS:
            raise UserError(f"Config field '{key}' is set by hypergradient_config; pass name, "
                            "iterations=, alpha=, radius= or unroll_steps= instead")
        if key in _UNSUPPORTED_FIELDS:
            raise UserError(f"Config field '{key}' is not supported by blo_mixup's hypergradients "
                            "(they always restore the lower weights); leave it unset")
        if key not in config_fields:
            choices = sorted(config_fields - _MANAGED_FIELDS - _UNSUPPORTED_FIELDS)
            raise UserError(f"unknown Betty Config field '{key}'{did_you_mean(key, choices)}; "
                            f"choose from: {', '.join(choices)}")

    options = {"type": REGISTERED_NAMES[method],
               "unroll_steps": _positive_int(unroll_steps, "unroll_steps", method)}
    if method in ("darts", "darts-plain"):
        options["darts_alpha"] = _positive_float(settings["radius"], "radius", method)
    elif method == "sama":
        options["sama_adam_alpha"] = _positive_float(settings["radius"], "radius", method)
    elif method == "neumann":
        options["neumann_iterations"] = _positive_int(settings["iterations"], "iterations", method)
        options["neumann_alpha"] = _positive_float(settings["alpha"], "alpha", method)
    else:
        options["cg_iterations"] = _positive_int(settings["iterations"], "iterations", method)
        options["cg_alpha"] = 1.0
    return Config(**options, **betty_kwargs)


__all__ = [
    "HYPERGRADIENTS", "REGISTERED_NAMES", "DEFAULTS", "hypergradient_config", "needs_double_backward",
    "register", "prepare_sama", "darts", "darts_plain", "darts_preconditioner", "sama", "neumann", "cg", "neumann_inverse_hvp",
    "conjugate_gradient", "UpdateDerivativeTracker",
]
