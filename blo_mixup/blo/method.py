"""The core method: attention-guided weight mixup trained by bi-level optimization (docs/method.md).

Phase 1: W on D1 (lower), A on D2 (upper) through a hypergradient, on Betty. Phase 2: A fixed, W
fine-tuned on the whole subsample. The saved model is merged: an ordinary transformers model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..methods.base import Method, register


@dataclass
class BloMixupOptions:
    hypergradient: str = field(default="darts", metadata={"help": "upper-level hypergradient: a registered name (shipped: darts, darts-plain, neumann, cg, sama, nystrom, direct-only; darts is the official code's preconditioned DARTS; your own: docs/hypergradients.md)"})  # checked in validate, with a suggestion
    hypergradient_options: dict | str | None = field(default=None, metadata={"help": "the hypergradient's options as name=value,name=value (a mapping in config files and fit()), e.g. scale=2.0 for a registered one; the built-ins' are also --hypergradient-iterations/-alpha/-radius"})
    hypergradient_module: str | None = field(default=None, metadata={"help": "a Python file or module to import first, which registers hypergradients (blo_mixup.register_hypergradient)"})
    hypergradient_iterations: int | None = field(default=None, metadata={"help": "Neumann/CG iterations (default: the method's, see docs/hypergradients.md)"})
    hypergradient_alpha: float | None = field(default=None, metadata={"help": "Neumann/CG step size"})
    hypergradient_radius: float | None = field(default=None, metadata={"help": "darts/darts-plain/sama finite-difference radius (default 0.01)"})
    unroll_steps: int = field(default=1, metadata={"help": "lower steps per upper step", "above": 0})
    mixup_granularity: str = field(default="rank", metadata={"help": "attention shape: rank (A = a @ c), element, row or matrix", "choices": ("rank", "element", "row", "matrix")})
    mixup_rank: int = field(default=1, metadata={"help": "rank r of A = a @ c", "above": 0})
    mixup_form: str = field(default="convex", metadata={"help": "convex: A*W + (1-A)*W0; paper: (a@c)*W + ((1-a)@(1-c))*W0", "choices": ("convex", "paper")})
    mixup_constraint: str = field(default="clamp", metadata={"help": "keep A in [0,1] by clamp (projection) or sigmoid", "choices": ("clamp", "sigmoid")})
    mixup_init_std: float = field(default=0.0, metadata={"help": "std of Gaussian noise on the initial attention factors, then clamped (the official code: 0.005)"})
    split_ratio: float = field(default=0.8, metadata={"help": "fraction of the subsample in D1 (the rest is D2)", "above": 0, "below": 1})
    upper_lr: float = field(default=2e-3, metadata={"help": "upper-level (attention) learning rate; formerly --outer-lr", "above": 0})
    lower_clip: float = field(default=5.0, metadata={"help": "lower-level (task weights) gradient clipping in phase 1; formerly --inner-clip", "min": 0})
    phase1_epochs: float | None = field(default=None, metadata={"help": "BLO epochs over D1 (default: --epochs)", "above": 0})
    phase2_epochs: float | None = field(default=None, metadata={"help": "phase-2 epochs over the whole subsample, A fixed (default: --epochs; 0 skips phase 2)", "min": 0})
    phase2_lr: float | None = field(default=None, metadata={"help": "phase-2 learning rate (default: --lr)", "above": 0})
    folds: int = field(default=1, metadata={"help": "fold averaging: run phase 1 on this many random D1/D2 re-splits and average W and A", "above": 0})
    levels: int = field(default=2, metadata={"help": "2, or 3 to add a data-reweighting node on top (the middle level then always uses darts-plain)", "choices": (2, 3)})
    data_weight_lr: float = field(default=1e-2, metadata={"help": "learning rate of the per-example weights (--levels 3)", "above": 0})
    add_levels: str | None = field(default=None, metadata={"help": "registered levels to add on top of weights and attention, comma-separated (data = --levels 3; your own: docs/extending.md)"})
    level_module: str | None = field(default=None, metadata={"help": "a Python file or module to import first, which registers levels (blo_mixup.register_level)"})
    level_options: dict | str | None = field(default=None, metadata={"help": "options for the added levels' build functions, as name=value,name=value (a mapping in config files and fit())"})


@register
class BloMixup(Method):
    name = "blo-mixup"
    options_class = BloMixupOptions
    summary = "attention-guided weight mixup trained by bi-level optimization on Betty (the core method)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.validate()
        self.mixup = None
        self.stats = {}

    def validate(self) -> None:
        """The checks beyond the fields' ranges and choices (Method.__init__ checked those, from the metadata).
        The hypergradient is built here, once per run: an unregistered name (with a suggestion) or a wrong
        option fails early, and self.hypergradient carries it to the engine and to bench."""
        from .hypergradients import HypergradientSettings, import_hypergradient_module

        o = self.options
        if o.hypergradient_module:
            import_hypergradient_module(o.hypergradient_module)
        self.hypergradient = HypergradientSettings.build(
            o.hypergradient, iterations=o.hypergradient_iterations, alpha=o.hypergradient_alpha,
            radius=o.hypergradient_radius, options=o.hypergradient_options, unroll_steps=o.unroll_steps)
        if o.level_module:
            import_hypergradient_module(o.level_module, option="level_module")
        from .engine import BLOSettings, added_levels
        from .levels import graph_levels

        # unknown levels fail early
        graph_levels(added_levels(BLOSettings(self.hypergradient, levels=o.levels, add_levels=o.add_levels)))
        if self.run is not None and (self.run.train_size or 0) > 0:  # fail before loading; split_two checks again
            from ..data import split_sizes

            split_sizes(self.run.train_size, o.split_ratio)

    def model_kwargs(self):
        return {"eager_attention": self.hypergradient.second_order}

    def mixup_config(self):
        from .mixup import MixupConfig

        o = self.options
        return MixupConfig(granularity=o.mixup_granularity, rank=o.mixup_rank, form=o.mixup_form, constraint=o.mixup_constraint,
                           init_std=o.mixup_init_std)

    def prepare_model(self, model, ctx):
        from .mixup import attach_weight_mixup

        self.mixup = attach_weight_mixup(model, self.mixup_config())
        return model

    def fit(self, model, ctx):
        from ..checkpoint import stage_for
        from ..data import split_two
        from .engine import BLOSettings, added_levels, run_phase1
        from ..training import train_loop

        o, run = self.options, ctx.run
        settings = BLOSettings(
            hypergradient=self.hypergradient, epochs=o.phase1_epochs or run.epochs, lower_lr=ctx.lr,
            lower_weight_decay=run.weight_decay, lower_warmup_ratio=run.warmup_ratio, lower_clip=o.lower_clip,
            upper_lr=o.upper_lr, levels=o.levels, add_levels=o.add_levels, level_options=o.level_options,
            data_weight_lr=o.data_weight_lr, skip_nonfinite=run.skip_nonfinite)
        model.to(ctx.device)
        self.mixup.to(ctx.device)
        start_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(self.mixup.state_dict())) if o.folds > 1 else None
        fold_states = []
        for fold in range(o.folds):
            if fold > 0:
                model.load_state_dict(start_state[0])
                self.mixup.load_state_dict(start_state[1])
            d1_raw, d2_raw = split_two(ctx.train_raw, o.split_ratio, run.seed + 1000 * fold, ctx.task)
            d1, d2 = ctx.tokenize(d1_raw), ctx.tokenize(d2_raw)
            desc = "phase 1 (BLO)" if o.folds == 1 else f"phase 1 (BLO), fold {fold + 1}/{o.folds}"
            top = ctx.train_loader(d2, seed_offset=201 + fold) if added_levels(settings) else None
            self.stats["phase1"] = run_phase1(
                model, self.mixup, ctx.train_loader(d1, seed_offset=1 + fold), ctx.train_loader(d2, seed_offset=101 + fold),
                settings, device=str(ctx.device), d1_ids=d1["idx"], desc=desc, stage=stage_for(ctx, desc), top_loader=top)
            self.stats["phase1"].update(d1_size=len(d1), d2_size=len(d2))
            if o.folds > 1:
                fold_states.append((copy.deepcopy(model.state_dict()), copy.deepcopy(self.mixup.state_dict())))
        if fold_states:
            model.load_state_dict(average_states([s[0] for s in fold_states]))
            self.mixup.load_state_dict(average_states([s[1] for s in fold_states]))
        self.mixup.requires_grad_(False)  # phase 2: A fixed
        phase2_epochs = run.epochs if o.phase2_epochs is None else o.phase2_epochs
        if phase2_epochs > 0:
            self.stats["phase2"] = train_loop(model, self, ctx, ctx.train, epochs=phase2_epochs,
                                              lr=o.phase2_lr or ctx.lr, desc="phase 2 (A fixed)")
        self.stats["attention"] = self.mixup.attention_stats()
        self.save_attention(ctx)
        return self.stats

    def save_attention(self, ctx) -> None:
        from ..report import attention_plot

        torch.save(self.mixup.state_dict(), ctx.output_dir / "attention.pt")
        attention_plot(self.mixup.attention_stats(), ctx.output_dir / "attention.png")

    def state_dict(self):
        return {"mixup": self.mixup.state_dict()}

    def load_state_dict(self, state):
        self.mixup.load_state_dict(state["mixup"])

    def finalize_model(self, model):
        from .mixup import merge_weight_mixup

        return merge_weight_mixup(model)

    def results(self):
        return {"blo": self.stats}

    def planned_weight_updates(self, num_examples, run):
        """Phase 1's lower steps over D1 (one fold: folds are averaged, not chained) plus phase 2's steps."""
        from ..config import epochs_of
        from ..data import split_sizes
        from ..training import steps_for

        o, epochs = self.options, epochs_of(run, num_examples)
        phase1 = steps_for(split_sizes(num_examples, o.split_ratio), run.batch_size, o.phase1_epochs or epochs)
        phase2_epochs = epochs if o.phase2_epochs is None else o.phase2_epochs
        return phase1 + (steps_for(num_examples, run.batch_size, phase2_epochs) if phase2_epochs > 0 else 0)

    def weight_updates(self, stats):
        return int(stats["phase1"]["lower_steps"]) + int(stats.get("phase2", {}).get("steps", 0))

    def bench_cases(self, bench):
        """`blo-mixup bench`: a phase-2 step, then one BLO iteration: blo-mixup's for each of bench's
        --hypergradients x --unroll-steps, a preset's at its own hypergradient, unroll steps, upper lr and phases."""
        from .hypergradients import HypergradientSettings

        o = self.options
        if type(self) is BloMixup:
            return [bench.mixup_step(), *(bench.blo(HypergradientSettings.build(h, unroll_steps=u))
                                          for h in bench.hypergradients for u in bench.unroll_steps)]
        return [bench.mixup_step(), bench.blo(self.hypergradient, name=self.name, upper_lr=o.upper_lr,
                                              phase_epochs=(o.phase1_epochs, o.phase2_epochs))]


@dataclass
class BloMixupFastOptions(BloMixupOptions):
    """blo-mixup's options with the cheaper preset's defaults (docs/method.md, "The fast preset")."""

    unroll_steps: int = field(default=5, metadata={"help": "lower steps per upper step", "above": 0})
    upper_lr: float = field(default=1e-2, metadata={"help": "upper-level (attention) learning rate; formerly --outer-lr", "above": 0})
    phase2_epochs: float | None = field(default=1.0, metadata={"help": "phase-2 epochs over the whole subsample, A fixed (0 skips phase 2)", "min": 0})


@register
class BloMixupFast(BloMixup):
    """The core method at a lower cost: one upper step per 5 lower steps instead of per step, with a 5x
    upper learning rate so that the attention moves as far over phase 1 as at the paper's defaults (Adam
    moves a parameter by about the learning rate per step); phase 1 as long as plain fine-tuning, then 1
    epoch of phase 2. Its cost and quality are measured in docs/performance.md and docs/method.md."""

    name = "blo-mixup-fast"
    options_class = BloMixupFastOptions
    summary = "blo-mixup's cheaper preset: 5 lower steps per upper step (upper lr x5), 1 epoch of phase 2; about 1.6x plain fine-tuning, but lost quality on STS-B (docs/method.md)"


@dataclass
class BloMixupPaperOptions(BloMixupOptions):
    """blo-mixup's options as the official code runs the method (docs/method.md, "As published")."""

    mixup_form: str = field(default="paper", metadata={"help": "convex: A*W + (1-A)*W0; paper: (a@c)*W + ((1-a)@(1-c))*W0", "choices": ("convex", "paper")})
    mixup_init_std: float = field(default=0.005, metadata={"help": "std of Gaussian noise on the initial attention factors, then clamped (the official code: 0.005)"})
    folds: int = field(default=5, metadata={"help": "fold averaging: run phase 1 on this many random D1/D2 re-splits and average W and A", "above": 0})


@register
class BloMixupPaper(BloMixup):
    """The core method as the official code runs it: its mixup form (a@c)*W + ((1-a)@(1-c))*W0, factors
    initialised at N(1, 0.005) and clamped, phase 1 on five random D1/D2 re-splits with W and A averaged
    before phase 2, and the preconditioned DARTS hypergradient (the package default). Not reproduced: the
    official code's defects (docs/method.md): extra lower steps from Betty 0.2.0's no-op roll-back, W left
    shifted by the probe radius. About five times blo-mixup's phase-1 cost."""

    name = "blo-mixup-paper"
    options_class = BloMixupPaperOptions
    summary = "blo-mixup as published: the official code's mixup form and initialisation, 5-fold averaging of phase 1; about 5x blo-mixup's phase-1 cost"


def average_states(states: list[dict]) -> dict:
    """Elementwise mean of state dicts (floating tensors); other entries come from the first."""
    averaged = {}
    for key, value in states[0].items():
        if torch.is_tensor(value) and value.is_floating_point():
            averaged[key] = torch.stack([s[key] for s in states]).mean(0)
        else:
            averaged[key] = value
    return averaged
