"""SAMA (Choe et al., 2023): the finite difference of darts on the vector preconditioned by the
derivative of the lower optimizer's update with respect to its gradient, recorded by a step hook."""

import torch

from ...errors import UserError
from .finite_difference import finite_difference
from .utils import check_strategy


def sama(vector, curr, prev, sync):
    """SAMA (Choe et al., 2023): DARTS's finite difference on the preconditioned vector P v.

    P is the diagonal derivative of the lower optimizer's last update with respect to the gradient
    (Adam/AdamW: exact, with bias corrections; SGD: lr), recorded by an optimizer step hook (see
    ``prepare_sama``). Radius: ``curr.config.sama_adam_alpha``.
    """
    check_strategy(curr, "sama")
    tracker = prepare_sama(curr)
    lower_params = curr.meta_trainable_parameters()
    preconditioned = [v * tracker.derivative(p) for p, v in zip(lower_params, vector)]
    return finite_difference(preconditioned, curr, prev, sync, curr.config.sama_adam_alpha)


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
