"""DPS: Dynamic Parameter Selection (Zhang et al., NeurIPS 2022), dense and mix variants (docs/methods.md).

Training runs in cycles of two stages of u = floor(T * update_ratio) optimizer steps each (T = total
steps, u >= 1), on the six Linear weights of every encoder layer, each matrix on its own:

- stage I: every entry is updated, and the method accumulates a per-entry score G = sum of g^2
  (dps-mix: the stage is Mixout towards the pretrained weights with per-input-column Bernoulli masks M,
  accumulating G += (g*M)^2 and a count F += M);
- stage II: per matrix, only the top (1 - p) fraction of entries by score is updated (p = --dps-p is
  the fraction FROZEN). dps-dense multiplies the gradients by that mask; dps-mix scores entries by
  S = G / max(F, 1) (times exp(-F/u) when u >= 50) and mixes out, with the fixed mask, towards U = the
  weights at the start of the stage.

G (and F) are reset at the start of every cycle. As in the official code, scores are accumulated and
masks applied to the raw gradients in the backward pass, before gradient clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..model_parts import DROPOUT_CONFIG_KEYS, encoder_linears, set_dropout
from .base import Method, register
from .mixout import mixout


@dataclass
class DpsOptions:
    dps_p: float = field(default=0.3, metadata={"help": "DPS: fraction of each matrix FROZEN in stage II (0.3: 70 percent of the entries are updated)", "min": 0, "below": 1})
    dps_update_ratio: float = field(default=0.05, metadata={"help": "DPS: stage length as a fraction of the total optimizer steps", "above": 0, "max": 1})
    dps_dropout: float = field(default=0.0, metadata={"help": "DPS: dropout rate of the whole model (the paper trains without dropout)", "min": 0, "below": 1})


def top_fraction_mask(score: torch.Tensor, keep: float) -> torch.Tensor:
    """A 0/1 mask of the same shape keeping exactly ceil(keep * n) entries with the largest scores.

    Ties at the threshold are broken by torch.topk; the official code keeps every tied entry.
    """
    flat = score.flatten()
    k = min(flat.numel(), math.ceil(round(keep * flat.numel(), 6)))
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, k, sorted=False).indices] = 1.0
    return mask.view_as(score)


class _DpsBase(Method):
    """The cycle bookkeeping shared by both variants: step counting, stage length, stage boundaries."""

    options_class = DpsOptions

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.step = 1  # the optimizer step about to run, 1-based
        self.stage_length = 1
        self.total_steps = 0
        self.targets: dict[str, nn.Linear] = {}
        self.hooks = []

    def setup_cycles(self, model, ctx) -> None:
        from ..training import steps_for

        self.total_steps = steps_for(len(ctx.train), ctx.run.batch_size, ctx.run.epochs)
        self.stage_length = max(1, math.floor(self.total_steps * self.options.dps_update_ratio))
        self.targets = encoder_linears(model)
        set_dropout(model, self.options.dps_dropout, DROPOUT_CONFIG_KEYS)

    def in_stage_one(self, step: int | None = None) -> bool:
        step = self.step if step is None else step
        return ((step - 1) // self.stage_length) % 2 == 0

    def starts_stage(self, step: int | None = None) -> bool:
        step = self.step if step is None else step
        return (step - 1) % self.stage_length == 0

    def loss(self, model, batch, ctx):
        # The loss hook runs first in every step: switch stages here, before the forward pass.
        self.begin_step()
        return super().loss(model, batch, ctx)

    def begin_step(self) -> None:
        raise NotImplementedError

    def after_optimizer_step(self, model, step, ctx):
        self.step = step + 1

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]

    def remove_hooks(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def results(self):
        last_step = max(1, self.step - 1)
        return {"dps": {"total_steps": self.total_steps, "stage_length": self.stage_length, "p_frozen": self.options.dps_p,
                        "matrices": len(self.targets), "last_stage": "I" if self.in_stage_one(last_step) else "II"}}


@register
class DpsDense(_DpsBase):
    name = "dps-dense"
    summary = "DPS-Dense: cycles of full updates (scoring entries by sum g^2) and updates of the top (1-p) entries per matrix"

    def prepare_model(self, model, ctx):
        self.setup_cycles(model, ctx)
        self.grad_sq = {name: torch.zeros_like(m.weight) for name, m in self.targets.items()}
        self.masks = {name: torch.ones_like(m.weight) for name, m in self.targets.items()}
        for name, module in self.targets.items():
            self.hooks.append(module.weight.register_post_accumulate_grad_hook(self._grad_hook(name)))
        return model

    def _grad_hook(self, name: str):
        def hook(param):
            if self.in_stage_one():
                self.grad_sq[name] = self.grad_sq[name].to(param.grad.device) + param.grad.detach() ** 2
            else:
                param.grad.mul_(self.masks[name].to(param.grad.device))
        return hook

    def state_dict(self):
        return {**super().state_dict(), "grad_sq": self.grad_sq, "masks": self.masks}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.grad_sq, self.masks = dict(state["grad_sq"]), dict(state["masks"])

    def begin_step(self) -> None:
        if not self.starts_stage():
            return
        if self.in_stage_one():  # a new cycle: forget the last cycle's scores
            for g in self.grad_sq.values():
                g.zero_()
        else:
            keep = 1.0 - self.options.dps_p
            self.masks = {name: top_fraction_mask(g, keep) for name, g in self.grad_sq.items()}

    def finalize_model(self, model):
        self.remove_hooks()
        return model


class DpsMixoutWeight(nn.Module):
    """A torch parametrization of a Linear weight: W_eff = (M*W + (1-M)*U - p*U) / (1-p).

    Stage I (fixed=False): M is a per-input-column Bernoulli(1-p) mask, resampled every step, and U the
    pretrained weight; in eval mode W_eff = W (mixout's expectation). Stage II (fixed=True): M is the
    fixed selection mask and U the weight at the start of the stage, in training and in eval alike.
    Buffers hold the DPS-Mix scores: grad_sq (G) and count (F).
    """

    def __init__(self, weight: torch.Tensor, p: float):
        super().__init__()
        self.p = p
        self.fixed = False
        self.register_buffer("pretrained", weight.detach().clone())
        self.register_buffer("target", weight.detach().clone())
        self.register_buffer("mask", torch.ones(1, weight.shape[1], dtype=weight.dtype, device=weight.device))
        self.register_buffer("grad_sq", torch.zeros_like(weight))
        self.register_buffer("count", torch.zeros_like(weight))

    def forward(self, weight):
        if not self.fixed and not self.training:
            return weight
        return mixout(weight, self.target, self.mask, self.p)


def mix_scores(grad_sq: torch.Tensor, count: torch.Tensor, stage_length: int) -> torch.Tensor:
    """DPS-Mix score S = G / max(F, 1), times exp(-F/u) when the stage is long (u >= 50)."""
    score = grad_sq / count.clamp(min=1)
    if stage_length >= 50:
        score = score * torch.exp(-count / stage_length)
    return score


@register
class DpsMix(_DpsBase):
    name = "dps-mix"
    summary = "DPS-Mix: cycles of column-wise Mixout (scoring entries) and mixout of the top (1-p) entries towards the stage start"

    def prepare_model(self, model, ctx):
        self.setup_cycles(model, ctx)
        for module in self.targets.values():
            parametrize.register_parametrization(module, "weight", DpsMixoutWeight(module.weight, self.options.dps_p))
            original = module.parametrizations.weight.original
            self.hooks.append(original.register_post_accumulate_grad_hook(self._grad_hook(module)))
        return model

    def state_dict(self):
        # Scores, masks and targets are buffers of the model; which stage each layer is in, and the
        # mask's shape (a column mask in stage I, a full one in II), are not. Loaded before the model.
        mixings = [self.mixing(m) for m in self.targets.values()]
        return {**super().state_dict(), "fixed": [m.fixed for m in mixings], "mask_shapes": [tuple(m.mask.shape) for m in mixings]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for module, fixed, shape in zip(self.targets.values(), state["fixed"], state["mask_shapes"]):
            mix = self.mixing(module)
            mix.fixed, mix.mask = fixed, torch.ones(shape, dtype=mix.mask.dtype, device=mix.mask.device)

    @staticmethod
    def mixing(module) -> DpsMixoutWeight:
        return module.parametrizations.weight[0]

    def _grad_hook(self, module):
        def hook(param):
            mix = self.mixing(module)
            if self.in_stage_one():
                # param.grad = g * M / (1-p), with g the gradient of W_eff: accumulate (g*M)^2 and F += M.
                mix.grad_sq += (param.grad.detach() * (1 - self.options.dps_p)) ** 2
                mix.count += mix.mask.expand_as(mix.count)
        return hook

    def begin_step(self) -> None:
        p = self.options.dps_p
        for module in self.targets.values():
            mix = self.mixing(module)
            original = module.parametrizations.weight.original
            with torch.no_grad():
                if self.starts_stage() and self.in_stage_one():
                    if mix.fixed:  # leaving stage II: keep the function it trained
                        original.copy_(mix(original))
                    mix.fixed = False
                    mix.target.copy_(mix.pretrained)
                    mix.grad_sq.zero_()
                    mix.count.zero_()
                elif self.starts_stage():
                    mix.mask = top_fraction_mask(mix_scores(mix.grad_sq, mix.count, self.stage_length), 1.0 - p)
                    mix.target.copy_(original)
                    mix.fixed = True
                if not mix.fixed:  # stage I: a fresh column mask every step
                    mix.mask = torch.bernoulli(torch.full((1, original.shape[1]), 1.0 - p, device=original.device,
                                                          dtype=original.dtype))

    def finalize_model(self, model):
        """Bake the weights the last stage evaluates with into plain nn.Linear weights."""
        self.remove_hooks()
        for module in self.targets.values():
            with torch.no_grad():
                mix = self.mixing(module)
                mix.eval()
                value = mix(module.parametrizations.weight.original).detach().clone()
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            with torch.no_grad():
                module.weight.copy_(value)
        return model
