"""What the hypergradient methods share: the lower loss and its gradients, Hessian-vector and mixed
products, random-state capture, and the checks that turn unsupported set-ups into one-line errors."""

import re
from contextlib import contextmanager

import torch

from ...errors import UserError


def lower_loss(problem):
    """The problem's loss on its last batch, at its current weights (a dict's "loss" entry too)."""
    out = problem.training_step_exec(problem.cur_batch)
    return out["loss"] if isinstance(out, dict) else out


def grads(outputs, inputs, grad_outputs=None, **kwargs):
    """torch.autograd.grad with zeros for inputs the outputs do not depend on."""
    found = torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(found, inputs)]


def dot(xs, ys):
    return sum((x * y).sum() for x, y in zip(xs, ys))


def capture_rng():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def restore_rng(state):
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def check_strategy(problem, method):
    if problem._strategy in ("fsdp", "zero"):
        raise UserError(
            f"the '{method}' hypergradient does not support Betty's '{problem._strategy}' strategy; "
            "use strategy 'default', 'cpu', 'gpu' or 'distributed'"
        )


def check_no_lower_problems(problem, method):
    # Second-order methods need the lower problem's weights to be a plain argmin (Betty asserts too).
    if len(problem.paths) > 0:
        raise UserError(
            f"the '{method}' hypergradient cannot sit on problem '{problem.name}', which has lower "
            "problems of its own; use 'darts-plain' (or 'darts') for a middle level"
        )


def lower_gradient_with_graph(curr):
    """dL_low/dw on the lower's last batch, with a graph for second derivatives."""
    lower_params = curr.meta_trainable_parameters()
    return lower_params, grads(lower_loss(curr), lower_params, create_graph=True)


def hessian_vector_product(lower_grad, lower_params, vector):
    # Entries of the gradient with no graph (constant in w) contribute nothing to H v.
    pairs = [(g, v) for g, v in zip(lower_grad, vector) if g.requires_grad]
    if not pairs:
        return [torch.zeros_like(p) for p in lower_params]
    outputs, grad_outputs = zip(*pairs)
    return grads(outputs, lower_params, grad_outputs=grad_outputs, retain_graph=True)


def mixed_product(lower_grad, x, prev, sync):
    """-(d/d lambda of dL_low/dw) . x: one more backward through the lower gradient's graph."""
    upper_params = prev.trainable_parameters()
    pairs = [(g, xi) for g, xi in zip(lower_grad, x) if g.requires_grad]
    if not pairs:
        return None if sync else [torch.zeros_like(p) for p in upper_params]
    outputs, xs = zip(*pairs)
    if sync:
        torch.autograd.backward(outputs, grad_tensors=[-xi for xi in xs], inputs=upper_params)
        return None
    return [-g for g in grads(outputs, upper_params, grad_outputs=xs)]


# What autograd says when a layer has no second derivative (fused attention kernels, CuDNN RNNs,
# once_differentiable Functions).
_NO_DOUBLE_BACKWARD = re.compile(r"double backward|derivative for .* is not implemented|differentiate twice", re.I)


@contextmanager
def double_backward(method):
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
