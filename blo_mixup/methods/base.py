"""The one small interface every fine-tuning method implements, and the registry of methods.

A method is a class with an options dataclass (its flags and config-file keys) and hooks into the
shared training loop (training.train_loop). The loop never branches on a method's name: a method that
changes the loss overrides `loss`, one that masks gradients overrides `before_optimizer_step`, one that
changes the model overrides `prepare_model`, one that picks data overrides `training_data`, one with
optimizers of its own (PAC-tuning's weights and noise) overrides `optimizers` and `prepare_step`, one that
evaluates while it trains (FTFT's early stopping) overrides `evaluate_and_stop`, and one whose training is
more than one loop (the bi-level core method, FTFT's reference model, PAC-tuning's K table) overrides
`fit`, which calls train_loop for its loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import unknown_choice

if TYPE_CHECKING:
    from ..training import RunContext


@dataclass
class NoOptions:
    """A method without options of its own."""


class Method:
    name: ClassVar[str]
    options_class: ClassVar[type] = NoOptions
    summary: ClassVar[str] = ""

    def __init__(self, options=None, run=None):
        from ..config import check_option_values

        self.options = options if options is not None else self.options_class()
        self.run = run
        # The ranges and choices the options' field metadata declares (config.check_option_values);
        # options built from flags, files or fit() were checked already, these may be built in Python.
        check_option_values(self.options)

    # --- set-up ---------------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments for loading the model (e.g. eager attention, dropout overrides)."""
        return {}

    def prepare_model(self, model, ctx: RunContext):
        """Change the model before training (swap layers, set dropout rates); return the model."""
        return model

    def training_data(self, ctx: RunContext):
        """The tokenized training examples the loop iterates over."""
        return ctx.train

    def param_groups(self, model, ctx: RunContext, lr: float) -> list[dict]:
        """Optimizer parameter groups; the default is AdamW's usual no-decay split."""
        from ..training import default_param_groups

        return default_param_groups(model.named_parameters(), ctx.run.weight_decay, lr)

    def optimizers(self, model, ctx: RunContext, lr: float, total_steps: int) -> tuple[list, Any]:
        """(optimizers, learning-rate scheduler or None) for a loop of `total_steps` steps. The loop steps
        every optimizer after each step's backward (and the scheduler, if any), saves their states in
        checkpoints and averages the gradients of all their parameters over processes. Default: AdamW
        over `param_groups`, linear warmup and decay."""
        import torch

        from ..training import linear_schedule

        optimizer = torch.optim.AdamW(self.param_groups(model, ctx, lr), lr=lr)
        return [optimizer], linear_schedule(optimizer, total_steps, ctx.run.warmup_ratio)

    # --- inside the loop ------------------------------------------------------------------------
    def prepare_step(self, model, step: int, ctx: RunContext) -> None:
        """Called at the start of each optimizer step, before its first `loss` (per-step noise, a switch
        of stage at a step count). What it sets must follow from `step` and the saved state, so that a
        resumed run does the same."""

    def loss(self, model, batch: dict, ctx: RunContext):
        """Training loss of one batch (batch holds 'labels' and 'idx')."""
        from ..training import model_loss

        return model_loss(model, batch)

    def before_optimizer_step(self, model, step: int, ctx: RunContext) -> None:
        """Called after backward and clipping, before optimizer.step (gradient masks)."""

    def after_optimizer_step(self, model, step: int, ctx: RunContext) -> None:
        """Called after optimizer.step and the scheduler step."""

    def evaluate_and_stop(self, model, step: int, ctx: RunContext) -> bool:
        """Called every `eval_every` steps and after the last, when train_loop is given eval_every > 0
        (FTFT's early stopping); True ends training there. What it keeps (best score, best weights) belongs
        in state_dict, so that --resume continues after the last evaluation. Every process calls it."""
        return False

    # --- the whole of training ------------------------------------------------------------------
    def fit(self, model, ctx: RunContext) -> dict[str, Any]:
        """Train `model`; return statistics for results.json. Default: the shared loop."""
        from ..training import train_loop

        return train_loop(model, self, ctx, self.training_data(ctx), epochs=ctx.run.epochs, lr=ctx.lr)

    def finalize_model(self, model):
        """Return the plain transformers model to evaluate and save (e.g. merge swapped layers)."""
        return model

    def results(self) -> dict[str, Any]:
        """Extra method-specific fields for results.json."""
        return {}

    # --- budget ---------------------------------------------------------------------------------
    def planned_weight_updates(self, num_examples: int, run) -> int:
        """Optimizer steps on the task weights W that this method will take on `num_examples` examples:
        the figure comparisons match budgets by (vanilla-matched). Default: one loop of --epochs."""
        from ..config import epochs_of
        from ..training import steps_for

        return steps_for(num_examples, run.batch_size, epochs_of(run, num_examples))

    def weight_updates(self, stats: dict[str, Any]) -> int:
        """Optimizer steps taken on W, from fit()'s statistics (results.json's "weight_updates")."""
        return int(stats["steps"])

    # --- `blo-mixup bench` (bench.py) ------------------------------------------------------------
    def bench_cases(self, bench) -> list:
        """The cases `blo-mixup bench` times for this method, built with `bench` (a bench.CaseBuilder:
        shared_loop, mixup_step, blo). Default: one step of the shared loop with this method's hooks; a
        method whose training is not that loop (it overrides fit) returns none, and is timed by whole runs."""
        if type(self).fit is not Method.fit:
            return []
        return [bench.shared_loop(self.name, self)]

    # --- checkpoints (checkpoint.py) ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the method changes during training besides the model's weights (masks, counters):
        saved in checkpoints so that --resume continues exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise unknown_choice("method", name, METHODS)
    return METHODS[name]
