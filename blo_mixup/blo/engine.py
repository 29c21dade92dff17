"""Assembles the Betty Engine for bi-level (or three-level) mixup fine-tuning and runs both phases.

Phase 1: BLO over D1/D2. The lower problem (TaskWeights) takes `unroll_steps` steps on D1, then the
upper problem (MixupAttention) takes one step on D2 with the hypergradient configured on the LOWER
problem's Config (Betty reads it there). Phase 2: A fixed, W fine-tuned on the whole subsample.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
from betty.configs import Config, EngineConfig
from betty.engine import Engine

from ..checkpoint import stop_at_next_step, stop_requested
from ..distributed import world_size
from ..errors import UserError
from .hypergradients import HypergradientSettings, parse_options
from .levels import Level, LevelContext, dependencies, graph_levels, level_names, readers, register_level
from .problems import DataWeighting, ExampleWeights, MixupAttention, TaskWeights
from ..training import default_param_groups, progress_bar


@dataclass
class BLOSettings:
    """Phase-1 settings (docs/method.md; the paper's defaults). `hypergradient`: the upper level's
    hypergradient, its options and the lower steps per upper step (HypergradientSettings), or a registered
    name for that method at its defaults and one lower step per upper step."""

    hypergradient: HypergradientSettings | str = "darts"
    epochs: float = 3.0
    lower_lr: float = 2e-5
    lower_weight_decay: float = 0.01
    lower_warmup_ratio: float = 0.1
    lower_clip: float = 5.0
    upper_lr: float = 2e-3
    upper_warmup_ratio: float = 0.1
    levels: int = 2  # 3: add the "data" level
    add_levels: str | tuple | None = None  # registered levels to add on top (levels.py), e.g. "data"
    level_options: dict | str | None = None  # handed to the added levels' build functions (LevelContext.options)
    data_weight_lr: float = 1e-2
    skip_nonfinite: int = 0  # updates with a NaN/Inf gradient that may be skipped (then: stop)

    def __post_init__(self):
        if not isinstance(self.hypergradient, HypergradientSettings):
            self.hypergradient = HypergradientSettings.build(self.hypergradient)

    @property
    def unroll_steps(self) -> int:
        return self.hypergradient.unroll_steps


def quiet_betty() -> None:
    """Betty logs every problem's set-up at INFO on stdout; keep the CLI's output readable."""
    from betty.logging.logger_base import get_logger

    get_logger().setLevel(logging.WARNING)


def adam(params, lr: float, weight_decay: float):
    """AdamW that survives Betty's optimizer rebuild (torch's AdamW does not: docs/method.md, Betty item 5)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)


def upper_config(**kwargs) -> Config:
    """Config for a problem whose loss uses its own parameters directly (docs/method.md, Betty items 2, 3)."""
    return Config(retain_graph=True, first_order=True, **kwargs)


class ProgressEngine(Engine):
    """Betty's Engine with a progress bar over lower steps, and checkpoints (checkpoint.py).

    `run` is Betty's loop (train_step per global step; this project uses no validation) started from
    `global_step`, so that a resumed phase continues where the killed one stopped. A save is taken only
    when every unroll cycle is complete (global_step divisible by unroll_steps): then no problem is
    half-way through its steps and the problems' step counters, optimizers, schedulers and modules, the
    loaders' positions and the random generators are the whole state.
    """

    progress = None
    stage = None  # checkpoint.Stage
    loaders: dict = {}  # name -> checkpoint.ResumableLoader
    last_save = 0

    def __init__(self, *args, device: str = "cpu", **kwargs):
        self.run_device = device  # read by configure_systems, which Engine.__init__ calls
        super().__init__(*args, **kwargs)

    def configure_systems(self):
        if self._strategy != "distributed":
            return super().configure_systems()
        # Betty's own set-up starts the process group and assumes one CUDA device per process; here
        # the group is already up (blo_mixup.distributed.start) and the device given: CPU (gloo) too.
        import torch.distributed as dist

        self._world_size, self._rank = dist.get_world_size(), dist.get_rank()
        self._local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = self.run_device
        return {"strategy": self._strategy, "backend": dist.get_backend(), "world_size": self._world_size,
                "rank": self._rank, "local_rank": self._local_rank}

    @property
    def unroll_steps(self) -> int:
        """Lower steps per upper step, as the lower problem's Config holds it (Betty reads it there)."""
        return self.weights.config.unroll_steps

    def cleanup(self):
        if self._strategy != "distributed":  # the process group outlives phase 1 (phase 2, evaluation)
            super().cleanup()

    def save_due(self) -> bool:
        """--save-steps steps since the last save (or a stop asked for), at the end of an unroll cycle,
        before the last step."""
        return (self.stage is not None and self.stage.enabled
                and self.global_step % self.unroll_steps == 0 and self.global_step < self.train_iters
                and (stop_requested() or self.stage.save_steps > 0
                     and self.global_step - self.last_save >= self.stage.save_steps))

    def run(self):
        self.train()
        while self.global_step < self.train_iters:
            self.global_step += 1
            self.train_step()
            if self.progress is not None:
                self.progress.update(1)
            if self.save_due():
                self.stage.save(self.global_step, **self.training_state())
                self.last_save = self.global_step
        self.cleanup()

    def training_state(self) -> dict:
        return {"problems": {p.name: {**p.state_dict(), "count": p._count, "epochs": list(p.epoch_counter),
                                      "skipped": p.skipped} for p in self.problems},
                "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()}}

    def load_training_state(self, state: dict) -> None:
        from ..checkpoint import restore_rng

        for problem in self.problems:
            saved = state["problems"][problem.name]
            problem.load_state_dict(saved)
            problem._count, problem.epoch_counter, problem.skipped = saved["count"], list(saved["epochs"]), saved["skipped"]
        for name, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][name])
        self.global_step = self.last_save = state["step"]
        restore_rng(state["rng"])


def three_level_dependencies(bottom, middle, top) -> tuple[dict, dict]:
    """(u2l, l2u) of the three-level graph: bottom = task weights W (loss weighted by the top's
    parameters), middle = attention A, top = example weights (its loss: the mixed model on D2).

        u2l  {middle: [bottom], top: [bottom]}      both upper nodes' parameters enter the bottom's loss
        l2u  {bottom: [middle, top], middle: [top]}

    Betty's find_paths then gives the middle [middle, bottom, middle] (the usual bi-level path) and
    the top two paths, the two terms of the chain rule for d(top loss)/d(example weights):
        [top, bottom, top]          dL/dW . dW*/dlambda               (lambda moves W, W moves the loss)
        [top, middle, bottom, top]  dL/dA . dA*/dW . dW*/dlambda      (... and W moves A's update)
    Without the l2u edge bottom -> top the top gets the second path only, and the first, main, term is
    lost (docs/three-levels.md). The bottom steps first, then the middle, then the top. It is what
    levels.dependencies makes of the declarations of "weights", "attention" and "data" below.
    """
    return {middle: [bottom], top: [bottom]}, {bottom: [middle, top], middle: [top]}


# ------------------------------------------------------------------------------ the built-in levels


def _build_weights(ctx: LevelContext, config) -> TaskWeights:
    s = ctx.settings
    # Built on the same groups TaskWeights.param_groups() hands Betty, so the scheduler's per-group
    # lambdas survive Betty's rebuild of optimizer and scheduler.
    from transformers import get_linear_schedule_with_warmup

    groups = default_param_groups(ctx.model.named_parameters(), s.lower_weight_decay, s.lower_lr)
    optimizer = adam(groups, s.lower_lr, s.lower_weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(s.lower_warmup_ratio * ctx.train_iters), ctx.train_iters)
    return TaskWeights("weights", config, ctx.model, optimizer, scheduler, ctx.loaders["d1"],
                       weight_decay=s.lower_weight_decay, lr=s.lower_lr)


def _build_attention(ctx: LevelContext, config) -> MixupAttention:
    from transformers import get_cosine_schedule_with_warmup

    s = ctx.settings
    optimizer = adam(ctx.mixup.parameters(), s.upper_lr, 0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(s.upper_warmup_ratio * ctx.upper_steps), ctx.upper_steps)
    return MixupAttention("attention", config, ctx.mixup, optimizer, scheduler, ctx.loaders["d2"])


def _build_data(ctx: LevelContext, config) -> DataWeighting:
    if ctx.d1_ids is None:
        raise ValueError("three levels need d1_ids, the ids ('idx' column) of the D1 examples")
    example_weights = ExampleWeights(len(ctx.d1_ids), ids=ctx.d1_ids)
    optimizer = adam(example_weights.parameters(), ctx.settings.data_weight_lr, 0.0)
    return DataWeighting("data", config, example_weights, optimizer, None, ctx.loaders["top"], model=ctx.model)


def _data_stats(problem) -> dict:
    """Every D1 example's learned weight by its dataset id (JSON keys: strings), and a summary."""
    example_weights = problem.module
    values = example_weights.weights().detach()
    return {"example_weights": {"mean": float(values.mean()), "std": float(values.std()),
                                "min": float(values.min()), "max": float(values.max()),
                                "by_id": {i: float(w) for i, w in zip(example_weights.ids, values.tolist())}}}


register_level("weights", _build_weights, summary="the task weights W on D1 (lower level)", replace=True)
register_level("attention", _build_attention, above=("weights",), reads=("weights",), replace=True,
               summary="the attention A on D2, through the hypergradient (upper level)")
register_level("data", _build_data, above=("weights",), reads=("weights", "attention"), stats=_data_stats, replace=True,
               summary="one learned weight per D1 example, scaling the task weights' loss (--levels 3; docs/three-levels.md)")


def added_levels(settings: BLOSettings) -> tuple[str, ...]:
    """The levels on top of weights and attention: --add-levels, and "data" for --levels 3."""
    added = level_names(settings.add_levels)
    return added + ("data",) if settings.levels == 3 and "data" not in added else added


def level_config(level: Level, read_by: dict, settings: BLOSettings):
    """A level's Betty Config from its place in the graph: Betty reads the hypergradient of an edge on
    its LOWER problem, so a level that others read carries one; the top levels do not."""
    if level.name == "weights":
        return settings.hypergradient.betty_config(gradient_clipping=settings.lower_clip)
    if read_by[level.name]:
        # A level in the middle (the attention under "data"): a finite difference is the only kind Betty
        # allows there; darts-plain (identity, a unit step) is the form checked against unrolled finite
        # differences (docs/three-levels.md), and it does not depend on this level's optimizer state.
        return HypergradientSettings.build("darts-plain").betty_config(retain_graph=True, first_order=True)
    return upper_config()


def build_engine(model, mixup, d1_loader, d2_loader, settings: BLOSettings, *, device: str, train_iters: int,
                 d1_ids=None, top_loader=None) -> ProgressEngine:
    """The Betty graph from the levels' declarations (levels.py): weights and attention, then the added
    ones (settings.add_levels; --levels 3 adds "data", whose ids are d1_ids, D1's 'idx' column). Added
    levels read `top_loader` (default: D2's loader)."""
    quiet_betty()
    levels = graph_levels(added_levels(settings))
    ctx = LevelContext(model=model, mixup=mixup, settings=settings, train_iters=train_iters,
                       upper_steps=max(1, train_iters // settings.unroll_steps), device=device, d1_ids=d1_ids,
                       loaders={"d1": d1_loader, "d2": d2_loader, "top": top_loader or d2_loader},
                       options=parse_options(settings.level_options))
    read_by = readers(levels)
    problems = {}
    for level in levels:
        problem = level.build(ctx, level_config(level, read_by, settings))
        if getattr(problem, "name", None) != level.name:
            raise UserError(f"level '{level.name}': its build function returned {type(problem).__name__} named "
                            f"{getattr(problem, 'name', None)!r}; name the Problem '{level.name}'")
        problems[level.name] = problem
    for level in levels:  # the levels above a node that change its loss (shape_lower_loss), in order
        for lower in level.above:
            if hasattr(problems[level.name], "shape_lower_loss"):
                problems[lower].shaped_by = [*getattr(problems[lower], "shaped_by", ()), level.name]
    for problem in problems.values():
        problem.skip_nonfinite = settings.skip_nonfinite
    u2l, l2u = dependencies(levels, problems)
    engine = ProgressEngine(
        problems=list(problems.values()),
        config=EngineConfig(train_iters=train_iters, logger_type="none",
                            strategy="distributed" if world_size() > 1 else "gpu" if device.startswith("cuda") else "cpu"),
        device=device,
        dependencies={"u2l": u2l, "l2u": l2u},
    )
    engine.levels = levels
    return engine


def run_phase1(model, mixup, d1_loader, d2_loader, settings: BLOSettings, *, device: str, d1_ids=None,
               desc: str = "phase 1 (BLO)", stage=None, top_loader=None) -> dict:
    """Bi-level optimization for settings.epochs passes over D1; returns step counts.

    The loaders are checkpoint.ResumableLoader (or plain DataLoaders when nothing is saved); the top
    node of three levels reads D2 through `top_loader` (default: d2_loader itself, shared with the
    attention node; give it its own to save checkpoints).
    `stage` (checkpoint.Stage) saves progress and, on --resume, continues it or skips a finished phase.
    """
    if stage is not None and stage.finished:
        return stage.restore_finished(model, mixup)
    train_iters = max(1, math.ceil(len(d1_loader) * settings.epochs))
    if settings.unroll_steps > train_iters:
        raise UserError(f"--unroll-steps {settings.unroll_steps} is more than the {train_iters} lower steps of phase 1, so "
                        "the attention would never be updated; lower --unroll-steps or raise --phase1-epochs")
    engine = build_engine(model, mixup, d1_loader, d2_loader, settings, device=device, train_iters=train_iters,
                          d1_ids=d1_ids, top_loader=top_loader)
    engine.stage = stage
    engine.loaders = {name: loader for name, loader in (("d1", d1_loader), ("d2", d2_loader), ("top", top_loader))
                      if hasattr(loader, "state_dict")}
    if stage is not None and stage.state is not None:
        engine.load_training_state(stage.state)
    engine.progress = progress_bar(train_iters, engine.global_step, desc)
    with stop_at_next_step(stage):
        try:
            engine.run()
        finally:
            engine.progress.close()
        stats = {"lower_steps": train_iters, "upper_steps": train_iters // settings.unroll_steps}
        for level in engine.levels:
            if level.stats is not None:
                stats.update(level.stats(getattr(engine, level.name)))
        if stage is not None:
            stage.finish(model, mixup, stats)
    return stats
