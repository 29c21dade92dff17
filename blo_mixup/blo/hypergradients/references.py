"""Two exact references for a hypergradient on a real model, and how close a method comes to them.

At a point of phase 1 (the lower weights W after a real lower step, the attention A, a fixed upper
batch, dropout off), every method returns the implicit part of the upper gradient, -J x with
J = d/dA (dL_low/dW) and x its stand-in for H^-1 v (v = dF/dW). Two things it may stand for:

- unrolled: the derivative of the upper loss through the last lower step. That step,
  W = AdamW(W_prev, clip(g(W_prev, A))), is recomputed on its own batch from the optimizer state
  before it (moments, step count, learning rate, decoupled weight decay) and the clipping as Betty
  applies it, and differentiated by autograd: (dW/dA)^T v = -lr J P v with P the derivative of Adam's
  update with respect to the gradient, J taken before the step. What DARTS-type methods stand for.
- implicit: -J H^-1 v at W, with H^-1 v from MINRES (H may be indefinite), run to a stated relative
  residual with a capped number of Hessian-vector products; the residual reached is reported. What
  Neumann, CG and Nystrom stand for.

Only the direction is comparable across methods: darts and darts-plain carry no learning rate.
"""

from __future__ import annotations

import math

import torch

from ...errors import UserError
from .utils import grads, hessian_vector_product, lower_gradient_with_graph, mixed_product


def minres(apply, b, max_products: int, rtol: float):
    """x with apply(x) ~= b for a symmetric, possibly indefinite operator (lists of tensors), by MINRES
    (Paige and Saunders 1975, unpreconditioned): at most max_products calls of apply, stopping once the
    estimated relative residual is under rtol. Returns (x, products used, true relative residual)."""
    dot = lambda xs, ys: sum(float((x * y).sum()) for x, y in zip(xs, ys))
    axpy = lambda a, xs, ys: [a * x + y for x, y in zip(xs, ys)]  # a x + y
    b = [t.detach() for t in b]
    x = [torch.zeros_like(t) for t in b]
    beta1 = math.sqrt(dot(b, b))
    if beta1 == 0.0:
        return x, 0, 0.0
    r1 = r2 = y = b
    old_beta, beta, dbar, epsilon, phibar, cs, sn = 0.0, beta1, 0.0, 0.0, beta1, -1.0, 0.0
    w = w2 = [torch.zeros_like(t) for t in b]
    products = 0
    while products < max_products:
        v = [t / beta for t in y]
        y = apply(v)
        products += 1
        if products > 1:
            y = axpy(-beta / old_beta, r1, y)
        alpha = dot(v, y)
        y = axpy(-alpha / beta, r2, y)
        r1, r2 = r2, y
        old_beta, beta = beta, math.sqrt(dot(y, y))
        old_epsilon = epsilon
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        epsilon, dbar = sn * beta, -cs * beta
        gamma = max(math.hypot(gbar, beta), 1e-300)
        cs, sn = gbar / gamma, beta / gamma
        phi, phibar = cs * phibar, sn * phibar
        w1, w2 = w2, w
        w = [(vi - old_epsilon * a - delta * c) / gamma for vi, a, c in zip(v, w1, w2)]
        x = axpy(phi, w, x)
        if phibar / beta1 < rtol or beta == 0.0:
            break
    residual = [bi - ai for bi, ai in zip(b, apply(x))]
    return x, products, math.sqrt(dot(residual, residual)) / beta1


class StepRecord:
    """What the unrolled reference needs of one lower step, taken just before it: the weights, the
    optimizer's state and hyperparameters, and (set after the step) the batch it used."""

    def __init__(self, lower):
        optimizer = lower.optimizer
        self.params = lower.meta_trainable_parameters()
        self.before = [p.detach().clone() for p in self.params]
        self.groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        for group in optimizer.param_groups:
            if group.get("amsgrad") or group.get("maximize") or not isinstance(optimizer, torch.optim.Adam):
                raise UserError("the unrolled reference knows Adam/AdamW steps only (no amsgrad, no maximize); "
                                "it is blo-mixup's lower optimizer")
        self.hyper = {id(p): {k: self.groups[id(p)][k] for k in ("lr", "betas", "eps", "weight_decay")}
                      for p in self.params if id(p) in self.groups}
        if any(group["weight_decay"] and not group.get("decoupled_weight_decay", True) for group in optimizer.param_groups):
            raise UserError("the unrolled reference needs decoupled weight decay (AdamW), as blo-mixup's lower optimizer has")
        self.state = {id(p): {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in optimizer.state[p].items()}
                      for p in self.params if p in optimizer.state}
        self.clip = float(lower.gradient_clipping or 0.0)
        self.batch = None


def adamw_step(record: StepRecord, weights, gradients):
    """The weights after one Adam(W) step from the recorded state with these gradients (clipped first,
    as torch.nn.utils.clip_grad_norm_ over all of them), differentiable in the gradients."""
    if record.clip > 0:
        total = torch.sqrt(sum((g * g).sum() for g in gradients))
        gradients = [g * torch.clamp(record.clip / (total + 1e-6), max=1.0) for g in gradients]
    stepped = []
    for p, w, g in zip(record.params, weights, gradients):
        hyper = record.hyper.get(id(p))
        if hyper is None:  # not in the optimizer: the step does not move it
            stepped.append(w)
            continue
        state = record.state.get(id(p), {})
        beta1, beta2 = hyper["betas"]
        lr, eps, decay = hyper["lr"], hyper["eps"], hyper["weight_decay"]
        t = float(state.get("step", 0)) + 1
        m = beta1 * state.get("exp_avg", torch.zeros_like(w)) + (1 - beta1) * g
        s = beta2 * state.get("exp_avg_sq", torch.zeros_like(w)) + (1 - beta2) * g * g
        base = w * (1 - lr * decay) if decay else w
        # sqrt's derivative is infinite at 0 (an entry with no gradient and no second moment yet), where
        # ds/dg = 0: take sqrt(s) there as a constant 0, so the derivative is the finite one, 1 / eps
        root = torch.where(s > 0, torch.sqrt(torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(s))
        denominator = root / math.sqrt(1 - beta2 ** t) + eps
        stepped.append(base - (lr / (1 - beta1 ** t)) * m / denominator)
    return stepped


def unrolled_reference(lower, upper, record: StepRecord, vector):
    """(dW/dA)^T v through the recorded lower step, recomputed on its batch at the current A (aligned
    with upper.trainable_parameters()). The model's weights are back to what they were afterwards."""
    upper_params = upper.trainable_parameters()
    now = [p.detach().clone() for p in record.params]
    try:
        with torch.no_grad():
            for p, before in zip(record.params, record.before):
                p.copy_(before)
        loss = lower.training_step_exec(record.batch)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        gradient = grads(loss, record.params, create_graph=True)
        stepped = adamw_step(record, record.before, gradient)
        pairs = [(s, v) for s, v in zip(stepped, vector) if s.requires_grad]
        outputs, grad_outputs = zip(*pairs)
        return grads(outputs, upper_params, grad_outputs=[v.detach() for v in grad_outputs])
    finally:
        with torch.no_grad():
            for p, value in zip(record.params, now):
                p.copy_(value)


def implicit_reference(lower, upper, vector, *, max_products: int = 50, rtol: float = 1e-3):
    """(-J H^-1 v at the lower's current weights and last batch, MINRES's products, its relative residual)."""
    lower_params, lower_grad = lower_gradient_with_graph(lower)
    x, products, residual = minres(lambda d: hessian_vector_product(lower_grad, lower_params, d), vector,
                                   max_products, rtol)
    return mixed_product(lower_grad, x, upper, False), products, residual


def attention_change(mixup, gradient):
    """{module: the first-order change of its effective attention A under a step along -gradient}
    (gradient aligned with mixup.parameters())."""
    by_param = dict(zip(map(id, mixup.parameters()), gradient))
    changes = {}
    for name, attention in mixup._named_attentions():
        params = list(attention.parameters())
        coefficient = attention.coefficient().expand(attention.weight_shape)
        probe = torch.zeros_like(coefficient, requires_grad=True)  # d(A . probe)/dparams, then its derivative in probe
        first = torch.autograd.grad(coefficient, params, grad_outputs=probe, create_graph=True)
        direction = [-by_param[id(p)] for p in params]
        changes[name] = torch.autograd.grad(first, probe, grad_outputs=direction)[0].detach()
    return changes


def agreement(estimate, reference, mixup) -> dict:
    """How close an implicit part is to a reference: cosine of the whole vector, per mixed matrix (median
    and lowest), norm ratio, and the share of effective attention entries whose change has the reference's
    sign (entries where the reference's change is 0 left out)."""
    flat = lambda xs: torch.cat([x.reshape(-1) for x in xs]).double()
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a.norm() > 0 and b.norm() > 0 else float("nan")
    e, r = flat(estimate), flat(reference)
    position, per_matrix = 0, []
    for attention in mixup.attentions.values():
        size = sum(p.numel() for p in attention.parameters())
        per_matrix.append(cos(e[position:position + size], r[position:position + size]))
        position += size
    per_matrix = [c for c in per_matrix if c == c]
    change_e, change_r = attention_change(mixup, estimate), attention_change(mixup, reference)
    same = total = 0
    for name, ref in change_r.items():
        moving = ref != 0
        same += int((torch.sign(change_e[name][moving]) == torch.sign(ref[moving])).sum())
        total += int(moving.sum())
    return {"cosine": cos(e, r), "cosine_matrix_median": float(torch.tensor(per_matrix).median()) if per_matrix else float("nan"),
            "cosine_matrix_min": min(per_matrix, default=float("nan")), "norm_ratio": float(e.norm() / r.norm()) if r.norm() > 0 else float("nan"),
            "sign_agreement": same / total if total else float("nan")}
