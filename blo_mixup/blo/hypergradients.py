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

Each method is one record (``Hypergradient``: function, options with defaults and rules, second
order or not, the Betty Config fields its options fill) in one registry, filled by
``register_hypergradient`` -- the built-in five at the end of this module, users' the same way
(``blo_mixup.register_hypergradient``; docs/hypergradients.md, "Your own hypergradient"). The CLI's
check, ``hypergradient_config`` and ``needs_double_backward`` read the record.

``hypergradient_config(name, ...)`` returns the LOWER problem's Betty Config for a method. The
finite-difference methods (darts, darts-plain, sama) save the lower weights and restore them
bitwise, where Betty's add-then-subtract drifts by rounding. See docs/hypergradients.md.
"""

import functools
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import betty.hypergradient
from betty.configs import Config

from ..errors import UserError, did_you_mean, unknown_choice

# Config fields hypergradient_config sets itself, and Betty features these functions do not support.
_MANAGED_FIELDS = {
    "type", "unroll_steps", "darts_alpha", "sama_adam_alpha", "neumann_iterations",
    "neumann_alpha", "cg_iterations", "cg_alpha", "hypergradient_options",
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
# the registry: one record per hypergradient


@dataclass(frozen=True)
class Hypergradient:
    """One hypergradient method: everything the CLI, validation, the docs and hypergradient_config read.

    name: the user name (``--hypergradient NAME``, ``hypergradient=`` in config files and fit()).
    fn: Betty's signature, ``fn(vector, curr, prev, sync)`` (module docstring).
    options: option name -> default. The default's type is the rule: int: a whole number >= 1;
        float: a number > 0; bool: true/false; str: any text.
    second_order: True when fn takes second derivatives (models then load with eager attention).
    betty_fields: option name -> the Betty Config field that also receives its value (the built-ins
        read Betty's own fields, e.g. radius -> darts_alpha); every option is in
        ``curr.config.hypergradient_options`` (``options_of(curr)``) whether mapped or not.
    betty_type: the Config.type under which fn sits in ``betty.hypergradient.jvp_fn_mapping``.
    builtin: one of the five that ship with blo_mixup.
    """

    name: str
    fn: Callable
    options: Mapping[str, Any] = field(default_factory=dict)
    second_order: bool = False
    betty_fields: Mapping[str, str] = field(default_factory=dict)
    betty_type: str = ""
    builtin: bool = False
    betty_fn: Callable | None = None  # what sits in jvp_fn_mapping: fn, or for a user's fn _with_sync(fn)

    def rule(self, option: str) -> str:
        """The option's valid values, in words."""
        return _RULES[type(self.options[option])]


_RULES = {int: "a whole number >= 1", float: "a number > 0", bool: "true or false", str: "any text"}

# name -> record, in registration order (the built-ins first).
_REGISTRY: dict[str, Hypergradient] = {}

# Live views of the registry, kept for existing callers: name -> Betty Config.type, name -> option defaults.
REGISTERED_NAMES: dict[str, str] = {}
DEFAULTS: dict[str, dict[str, Any]] = {}

# The built-in names (the registry also holds the ones users register: hypergradient_names()).
HYPERGRADIENTS = ("darts", "darts-plain", "neumann", "cg", "sama")

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass
class HypergradientConfig(Config):
    """Betty's Config plus every option of the hypergradient, by its blo_mixup name (``options_of``)."""

    hypergradient_options: dict = field(default_factory=dict)


def register_hypergradient(name, fn, *, options=None, second_order=False, replace=False, betty_fields=None):
    """Make ``fn`` usable by name: ``--hypergradient name``, ``hypergradient: name`` in config files,
    ``blo_mixup.fit(..., hypergradient=name)``, ``BLOSettings(hypergradient=name)`` and
    ``hypergradient_config(name)``.

    fn(vector, curr, prev, sync): Betty's signature. ``vector`` is the upper loss's gradient with respect
        to the lower weights (one tensor per ``curr.meta_trainable_parameters()``), ``curr`` the lower
        problem, ``prev`` the upper one. Return one tensor per ``prev.trainable_parameters()``: the
        implicit part of the upper gradient, -(d2 L_low / d lambda d w) . (H^-1 v or its estimate).
        ``sync`` may be ignored: when Betty asks for it, blo_mixup adds the returned tensors to the
        upper parameters' ``.grad`` (``prev.set_grads``) itself.
    options: option name -> default (int: whole number >= 1; float: number > 0; bool; str). Users set
        them with ``hypergradient_options`` ({"scale": 2.0} in config files and fit(),
        ``--hypergradient-options scale=2.0`` on the command line); fn reads them with
        ``options_of(curr)``.
    second_order: True if fn differentiates twice (then transformers models load with eager attention).
    replace: re-register a name that is taken (otherwise a UserError).
    betty_fields: option name -> Betty Config field that also receives the value (to reuse a Betty function).
    Returns the record (Hypergradient).
    """
    return _register(name, fn, options=options, second_order=second_order, replace=replace,
                     betty_fields=betty_fields, builtin=False)


def _register(name, fn, *, options, second_order, replace, betty_fields, builtin):
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"hypergradient name {name!r}: use lower-case letters, digits, '-' and '_', starting "
                        "with a letter (e.g. 'scaled-identity')")
    if name in _REGISTRY and not replace:
        raise UserError(f"hypergradient '{name}' is already registered; pick another name or pass replace=True")
    if not callable(fn):
        raise UserError(f"hypergradient '{name}': fn must be a function fn(vector, curr, prev, sync), not {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(None, None, None, None)
    except TypeError:
        raise UserError(f"hypergradient '{name}': fn must take four arguments (vector, curr, prev, sync), "
                        "as Betty calls it") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): trust it
    if not isinstance(second_order, bool):
        raise UserError(f"hypergradient '{name}': second_order must be True or False, not {second_order!r}")
    options = dict(options or {})
    for option, default in options.items():
        if not isinstance(option, str) or not option.isidentifier():
            raise UserError(f"hypergradient '{name}': option name {option!r} must be a Python identifier")
        if type(default) not in _RULES:
            raise UserError(f"hypergradient '{name}': option '{option}' has default {default!r}; defaults must "
                            "be int, float, bool or str (the type is the option's rule)")
        _check_value(name, option, default, default)
    betty_fields = dict(betty_fields or {})
    config_fields = {f.name for f in fields(Config)}
    for option, betty_field in betty_fields.items():
        if option not in options:
            raise UserError(f"hypergradient '{name}': betty_fields names '{option}', which is not one of its options")
        if betty_field not in config_fields or betty_field in ("type", "unroll_steps"):
            raise UserError(f"hypergradient '{name}': '{betty_field}' is not a Betty Config field it may set"
                            f"{did_you_mean(betty_field, config_fields)}")
    betty_type = "blo_" + name.replace("-", "_")
    clash = [other.name for other in _REGISTRY.values() if other.betty_type == betty_type and other.name != name]
    if clash:
        raise UserError(f"hypergradient '{name}' would sit in Betty under '{betty_type}', as '{clash[0]}' does; "
                        "pick another name")
    record = Hypergradient(name=name, fn=fn, options=options, second_order=second_order,
                           betty_fields=betty_fields, betty_type=betty_type, builtin=builtin,
                           betty_fn=fn if builtin else _with_sync(fn))
    _REGISTRY[name] = record
    REGISTERED_NAMES[name] = betty_type
    DEFAULTS[name] = dict(options)
    betty.hypergradient.jvp_fn_mapping[betty_type] = record.betty_fn
    return record


def _with_sync(fn):
    """A user's fn as Betty needs it: when Betty asks for sync (it does at every upper step's last
    path) and fn returned its tensors, add them to the upper parameters' .grad and return None, as
    Betty's own functions do (Betty drops a value returned under sync)."""

    @functools.wraps(fn)
    def call(vector, curr, prev, sync):
        grads = fn(vector, curr, prev, sync)
        if sync and grads is not None:
            prev.set_grads(prev.trainable_parameters(), list(grads))
            return None
        return grads

    return call


def unregister_hypergradient(name):
    """Remove a user-registered hypergradient (the built-in ones stay)."""
    record = get_hypergradient(name)
    if record.builtin:
        raise UserError(f"'{record.name}' is built in and cannot be unregistered; register_hypergradient("
                        f"'{record.name}', fn, replace=True) replaces it")
    del _REGISTRY[record.name], REGISTERED_NAMES[record.name], DEFAULTS[record.name]
    betty.hypergradient.jvp_fn_mapping.pop(record.betty_type, None)


def hypergradient_names():
    """Every registered name: the built-in ones, then the users', in registration order."""
    return tuple(_REGISTRY)


def get_hypergradient(name):
    """The record of ``name`` (case-insensitive; a registered Betty type such as 'blo_cg' works too)."""
    key = str(name).strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    for record in _REGISTRY.values():
        if key == record.betty_type:
            return record
    error = unknown_choice("hypergradient", name, list(_REGISTRY))
    raise UserError(f"{error}; your own: blo_mixup.register_hypergradient (docs/hypergradients.md, "
                    "'Your own hypergradient')")


def options_of(curr):
    """The hypergradient options of lower problem ``curr`` ({name: value}, defaults filled in).

    A Config built by hypergradient_config carries them; a plain Betty Config gets the defaults of
    the hypergradient registered under its type.
    """
    config = curr.config if hasattr(curr, "config") else curr
    options = getattr(config, "hypergradient_options", None)
    if options is None:
        return dict(get_hypergradient(config.type).options)
    return dict(options)


def register():
    """Put every registered method into Betty's jvp_fn_mapping under its registered type (idempotent)."""
    for record in _REGISTRY.values():
        betty.hypergradient.jvp_fn_mapping[record.betty_type] = record.betty_fn


def _method_name(name):
    return get_hypergradient(name).name


def needs_double_backward(name):
    """True for methods that take second derivatives (neumann, cg, and users' with second_order=True).

    Their models must support double backward: load transformers models with
    ``attn_implementation="eager"`` (the fused attention kernels have no double backward on CPU).
    """
    return get_hypergradient(name).second_order


def _positive_int(value, option, method):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give a whole number >= 1")
    return value


def _positive_float(value, option, method):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give a number > 0")
    return float(value)


def _check_value(method, option, value, default):
    """``value`` checked (and converted from text, as a flag or config file gives it) by ``default``'s type."""
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give "
                            f"{_RULES[kind]}") from None
    if kind is int:
        return _positive_int(value, option, method)
    if kind is float:
        return _positive_float(value, option, method)
    if not isinstance(value, kind):
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give {_RULES[kind]}")
    return value


def parse_options(options):
    """``hypergradient_options`` as a dict: a dict as is, text "key=value,key=value" (the flag) split."""
    if options is None or options == "":
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    if not isinstance(options, str):
        raise UserError(f"hypergradient_options={options!r}; give a dict, or text 'name=value,name=value'")
    parsed = {}
    for item in options.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"hypergradient_options '{options}': '{item}' is not name=value; "
                            "write e.g. --hypergradient-options scale=2.0,steps=3")
        parsed[key.strip()] = value.strip()
    return parsed


def hypergradient_config(name, *, iterations=None, alpha=None, radius=None, options=None, unroll_steps=1,
                         **betty_kwargs):
    """The LOWER problem's Betty Config for hypergradient method ``name``.

    name: a registered name (built in: "darts" | "darts-plain" | "neumann" | "cg" | "sama"; case-insensitive).
    iterations: neumann, cg: Hessian-vector products per hypergradient (default 3).
    alpha: neumann only: series step, needs 0 < alpha * eig(H) < 2 (default 0.01).
    radius: darts, darts-plain, sama: norm of the finite-difference probe in weight space (default 0.01).
    options: any of the method's options by name (a dict, or text "name=value,..."); iterations=,
        alpha= and radius= are shorthands for the options of those names.
    unroll_steps: lower steps per upper step (default 1).
    betty_kwargs: other Config fields (gradient_clipping, precision, log_step, ...).
    An option the method does not take, a bad value, or an unknown field is a UserError.
    The result is a Betty Config (HypergradientConfig) whose ``hypergradient_options`` holds every option.
    """
    record = get_hypergradient(name)
    method = record.name
    given = {k: v for k, v in (("iterations", iterations), ("alpha", alpha), ("radius", radius)) if v is not None}
    for option, value in parse_options(options).items():
        if option in given:
            raise UserError(f"option '{option}' of the '{method}' hypergradient is given twice (as "
                            f"hypergradient_{option} and in hypergradient_options); give it once")
        given[option] = value
    for option, value in given.items():
        if option in record.options:
            continue
        if record.builtin and option in _WHY_NOT:
            why = _WHY_NOT[option]
        else:
            names = ", ".join(record.options) or "none"
            why = f"its options are: {names}{did_you_mean(option, list(record.options))}"
        raise UserError(f"{option}={value!r} does not apply to the '{method}' hypergradient: {why}; leave {option} unset")
    settings = {option: _check_value(method, option, given.get(option, default), default)
                for option, default in record.options.items()}

    managed = _MANAGED_FIELDS | set(record.betty_fields.values())
    config_fields = {f.name for f in fields(Config)}
    for key in betty_kwargs:
        if key in managed:
            raise UserError(f"Config field '{key}' is set by hypergradient_config; pass name, "
                            "iterations=, alpha=, radius=, options= or unroll_steps= instead")
        if key in _UNSUPPORTED_FIELDS:
            raise UserError(f"Config field '{key}' is not supported by blo_mixup's hypergradients "
                            "(they always restore the lower weights); leave it unset")
        if key not in config_fields:
            choices = sorted(config_fields - managed - _UNSUPPORTED_FIELDS)
            raise UserError(f"unknown Betty Config field '{key}'{did_you_mean(key, choices)}; "
                            f"choose from: {', '.join(choices)}")

    mapped = {betty_field: settings[option] for option, betty_field in record.betty_fields.items()}
    return HypergradientConfig(type=record.betty_type, unroll_steps=_positive_int(unroll_steps, "unroll_steps", method),
                               hypergradient_options=settings, **mapped, **betty_kwargs)


_WHY_NOT = {
    "iterations": "it has no iterations (only neumann and cg do)",
    "alpha": "it has no step size (only neumann does; CG needs none)",
    "radius": "it has no finite-difference radius (only darts, darts-plain and sama do)",
}


def import_hypergradient_module(spec, option: str = "hypergradient_module"):
    """Import a module (dotted name) or a Python file that registers hypergradients (or levels, with
    option="level_module"); once per process."""
    spec = str(spec).strip()
    if spec in _IMPORTED:
        return _IMPORTED[spec]
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{option} '{spec}': no such file; give a .py file or an importable module")
        module_name = "blo_mixup_user_" + re.sub(r"\W", "_", path.stem)
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as error:
            if error.name is None or not spec.startswith(error.name):
                raise
            raise UserError(f"{option} '{spec}': no module named '{error.name}'; give a .py file "
                            "or a module on the Python path") from None
    _IMPORTED[spec] = module
    return module


_IMPORTED = {}

# The built-in five, through the same registration as a user's.
_register("darts", darts, options={"radius": 0.01}, second_order=False, replace=False,
          betty_fields={"radius": "darts_alpha"}, builtin=True)
_register("darts-plain", darts_plain, options={"radius": 0.01}, second_order=False, replace=False,
          betty_fields={"radius": "darts_alpha"}, builtin=True)
_register("neumann", neumann, options={"iterations": 3, "alpha": 0.01}, second_order=True, replace=False,
          betty_fields={"iterations": "neumann_iterations", "alpha": "neumann_alpha"}, builtin=True)
_register("cg", cg, options={"iterations": 3}, second_order=True, replace=False,
          betty_fields={"iterations": "cg_iterations"}, builtin=True)
_register("sama", sama, options={"radius": 0.01}, second_order=False, replace=False,
          betty_fields={"radius": "sama_adam_alpha"}, builtin=True)
assert hypergradient_names() == HYPERGRADIENTS


__all__ = [
    "HYPERGRADIENTS", "REGISTERED_NAMES", "DEFAULTS", "Hypergradient", "HypergradientConfig", "hypergradient_config",
    "register_hypergradient", "unregister_hypergradient", "hypergradient_names", "get_hypergradient", "options_of",
    "parse_options", "import_hypergradient_module", "needs_double_backward",
    "register", "prepare_sama", "darts", "darts_plain", "darts_preconditioner", "sama", "neumann", "cg", "neumann_inverse_hvp",
    "conjugate_gradient", "UpdateDerivativeTracker",
]
