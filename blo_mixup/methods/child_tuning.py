"""Child-Tuning (Xu et al., "Raise a Child in Large Language Model", EMNLP 2021, arXiv 2109.05687).

Only a "child network" of the pretrained layers is updated: their gradients are multiplied by a
mask after clipping and before AdamW's moment update (the official code masks inside AdamW.step,
which is the same thing). Parameters outside the layer stack (embeddings, pooler, task head) are
always updated, as in the official code (its masks cover parameters named "layer" only).

- child-tuning-d (task-driven): before training, the empirical Fisher F = mean over batches of
  (dL/dw)^2 is computed in one pass over the training subsample; the top `child_reserve_p` fraction
  of the layer stack's entries (one global threshold over all of them; ties at the threshold are
  kept) form a fixed mask. Entries outside it never move (their Adam moments stay zero). Extra
  cost: one forward and backward pass over the training set. Deviation: the official code clips
  each tensor's gradient to max_grad_norm before squaring; here the raw gradients are used.
- child-tuning-f (task-free): each step, every gradient entry is kept with probability
  `child_reserve_p` and divided by it (an unbiased estimate of the gradient). No extra passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..model_parts import encoder_layers
from .base import Method, register


@dataclass
class ChildTuningOptions:
    child_reserve_p: float = field(default=0.3, metadata={"help": "Child-Tuning: fraction of the layer stack's gradient entries kept (0 < p <= 1)", "above": 0, "max": 1})


def child_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters Child-Tuning masks: those of the transformer layers."""
    return [p for p in encoder_layers(model).parameters() if p.requires_grad]


def fisher_information(model, batches, loss_fn) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Empirical Fisher of the layer parameters: mean over batches of the squared batch gradient."""
    from ..training import mean_squared_gradients

    was_training = model.training
    model.train()  # as the official code: dropout on, as in training
    fisher = mean_squared_gradients(model, batches, loss_fn, {p: p for p in child_parameters(model)})
    model.train(was_training)
    return fisher


def top_fraction_masks(scores: dict, reserve_p: float) -> dict:
    """Boolean masks keeping the entries whose score is among the top reserve_p fraction of all entries.

    One threshold over every tensor together: the k-th largest score, k = ceil(reserve_p * n).
    """
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    keep = max(1, math.ceil(reserve_p * flat.numel()))
    threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values
    return {p: s >= threshold for p, s in scores.items()}


class _ChildTuning(Method):
    options_class = ChildTuningOptions

    def prepare_model(self, model, ctx=None):
        child_parameters(model)  # fail early, with a UserError, on a model without a layer stack
        return model


@register
class ChildTuningD(_ChildTuning):
    name = "child-tuning-d"
    summary = "Child-Tuning_D: update only the top-Fisher fraction of the layers' weights (Xu et al., EMNLP 2021)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.masks: dict = {}
        self.stats: dict = {}

    def compute_masks(self, model, batches, loss_fn) -> dict:
        """Fisher on `batches`, then the global top-fraction masks; stored and returned."""
        self.masks = top_fraction_masks(fisher_information(model, batches, loss_fn), self.options.child_reserve_p)
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        self.stats = {"kept_entries": kept, "total_entries": total, "kept_fraction": kept / max(total, 1)}
        return self.masks

    def fit(self, model, ctx):
        from ..training import to_device

        model.to(ctx.device)
        batches = (to_device(b, ctx.device) for b in ctx.loader(self.training_data(ctx), seed_offset=7))
        self.compute_masks(model, batches, lambda m, b: self.loss(m, b, ctx))
        return super().fit(model, ctx)

    def before_optimizer_step(self, model, step, ctx):
        for param, mask in self.masks.items():
            if param.grad is not None:
                param.grad.mul_(mask)

    def results(self):
        return {"child_tuning": self.stats}


@register
class ChildTuningF(_ChildTuning):
    name = "child-tuning-f"
    summary = "Child-Tuning_F: random Bernoulli gradient masks each step, rescaled by 1/p (Xu et al., EMNLP 2021)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.params: list = []

    def prepare_model(self, model, ctx=None):
        self.params = child_parameters(model)
        return model

    def before_optimizer_step(self, model, step, ctx):
        p = self.options.child_reserve_p
        for param in self.params:
            if param.grad is not None:
                keep = torch.empty_like(param.grad).bernoulli_(p)
                param.grad.mul_(keep).div_(p)
