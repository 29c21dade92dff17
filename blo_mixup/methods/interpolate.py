"""The controls that say what learning the attention adds (docs/method.md, "What a fixed attention is"):
a scalar attention chosen by grid search instead of a hypergradient (`interpolate`), and one frozen at a
given value for blo-mixup's number of weight updates (`fixed-attention`).

Both mix the matrices blo-mixup mixes (the layer stack's Linear layers and the pooler: those with
pretrained weights; the embeddings and the new head are not mixed) in the convex form
W0 + A * (W - W0), with one scalar A shared by all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .base import Method, register
from .vanilla import MatchedOptions, VanillaMatched


def attach_scalar_attention(model, value: float):
    """Mix every default target of `model` with a frozen scalar attention equal to `value`; the mixup."""
    from ..blo.mixup import MixupConfig, attach_weight_mixup

    mixup = attach_weight_mixup(model, MixupConfig(granularity="matrix", init=value))
    return mixup.requires_grad_(False)


@torch.no_grad()
def set_scalar_attention(mixup, value: float) -> None:
    for parameter in mixup.parameters():
        parameter.fill_(value)


def parse_alphas(text: str) -> list[float]:
    """"0,0.5,1" -> [0.0, 0.5, 1.0]: the grid, each value in [0, 1], sorted, repeats dropped."""
    try:
        alphas = sorted({float(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        alphas = []
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
        raise UserError(f"--interpolate-alphas {text!r} is not a list of values in [0, 1]; "
                        "pass them comma-separated, e.g. 0,0.5,1")
    return alphas


@dataclass
class InterpolateOptions:
    interpolate_alphas: str = field(default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", metadata={"help": "interpolate: the grid of alpha in W0 + alpha * (W - W0), comma-separated values in [0, 1]; the best on D2 is kept (ties: the largest)"})


@register
class Interpolate(Method):
    """The scalar version of the core method, chosen by grid search: W trained on D1 (blo-mixup's lower
    split, for its phase-1 budget), alpha chosen on D2 from the grid, then W trained on the whole
    subsample with alpha fixed for blo-mixup's phase-2 budget. With the grid {1} it is plain
    fine-tuning on D1 and then on all rows."""

    name = "interpolate"
    options_class = InterpolateOptions
    summary = "W0 + alpha * (W - W0) with one alpha chosen on D2 after training on D1, then trained on all rows with alpha fixed: the grid-search control for blo-mixup"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.alphas = parse_alphas(self.options.interpolate_alphas)
        self.mixup = None
        self.alpha = None
        self.scores = {}

    def prepare_model(self, model, ctx):
        # Attached now, so that W0 is the pretrained weights; at A = 1 the mixed weight is W exactly
        # (torch.lerp returns its end point at weight 1) and so is W's gradient.
        self.mixup = attach_scalar_attention(model, 1.0)
        return model

    def fit(self, model, ctx):
        from ..blo.method import BloMixupOptions
        from ..data import split_two
        from ..metrics import main_metric_value
        from ..training import evaluate, train_loop

        run, core = ctx.run, BloMixupOptions()  # blo-mixup's split and phases, at its defaults
        d1_raw, d2_raw = split_two(ctx.train_raw, core.split_ratio, run.seed, ctx.task)
        d1, d2 = ctx.tokenize(d1_raw), ctx.tokenize(d2_raw)
        self.mixup.to(ctx.device)
        set_scalar_attention(self.mixup, 1.0)
        phase1 = train_loop(model, self, ctx, d1, epochs=run.epochs, lr=ctx.lr, seed_offset=1, desc="phase 1 (W on D1)")
        # D2 is part of the training subsample: alpha never sees the evaluation set.
        self.scores = {}
        for alpha in self.alphas:
            set_scalar_attention(self.mixup, alpha)
            self.scores[alpha] = main_metric_value(ctx.task, evaluate(model, ctx, d2))
        ranked = {a: -math.inf if math.isnan(score) else score for a, score in self.scores.items()}  # NaN: a constant prediction on STS-B
        self.alpha = max(ranked, key=lambda a: (ranked[a], a))
        set_scalar_attention(self.mixup, self.alpha)
        phase2 = train_loop(model, self, ctx, ctx.train, epochs=run.epochs, lr=ctx.lr, desc="phase 2 (alpha fixed)")
        return {"phase1": {**phase1, "d1_size": len(d1), "d2_size": len(d2)}, "phase2": phase2}

    def finalize_model(self, model):
        from ..blo.mixup import merge_weight_mixup

        return merge_weight_mixup(model)

    def results(self):
        return {"interpolate": {"alpha": self.alpha, "d2_scores": {f"{a:g}": s for a, s in self.scores.items()}}}

    def planned_weight_updates(self, num_examples, run):
        from ..blo.method import BloMixup

        return BloMixup(run=run).planned_weight_updates(num_examples, run)

    def weight_updates(self, stats):
        return int(stats["phase1"]["steps"]) + int(stats["phase2"]["steps"])


@dataclass
class FixedAttentionOptions(MatchedOptions):
    attention: float = field(default=0.9, metadata={"help": "fixed-attention: the value c at which the scalar attention A is frozen", "above": 0, "max": 1})


@register
class FixedAttention(VanillaMatched):
    """Plain fine-tuning through W0 + c * (W - W0) with c frozen, for as many weight updates as
    --match-method (default blo-mixup): the control for a learned attention that ends near c. Under
    AdamW it is a learning-rate scale of c on the mixed matrices (docs/method.md)."""

    name = "fixed-attention"
    options_class = FixedAttentionOptions
    summary = "plain fine-tuning through W0 + c * (W - W0) with c (--attention) frozen, at --match-method's number of weight updates: the fixed-A control for blo-mixup"

    def prepare_model(self, model, ctx):
        self.mixup = attach_scalar_attention(model, self.options.attention)
        return model

    def fit(self, model, ctx):
        self.mixup.to(ctx.device)
        return {**super().fit(model, ctx), "attention": self.options.attention}

    def finalize_model(self, model):
        from ..blo.mixup import merge_weight_mixup

        return merge_weight_mixup(model)
