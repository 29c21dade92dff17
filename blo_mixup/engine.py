"""Assembles the Betty Engine for bi-level (or three-level) mixup fine-tuning and runs both phases.

Phase 1: BLO over D1/D2. The lower problem (TaskWeights) takes `unroll_steps` steps on D1, then the
upper problem (MixupAttention) takes one step on D2 with the hypergradient method configured on the
LOWER problem's Config (Betty reads it there). Phase 2: A fixed, W fine-tuned on the whole subsample.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch
from betty.configs import Config, EngineConfig
from betty.engine import Engine

from .checkpoint import stop_at_next_step, stop_requested
from .distributed import world_size
from .errors import UserError
from .hypergradients import hypergradient_config
from .training import default_param_groups, progress_bar
from .problems import DataWeighting, ExampleWeights, MixupAttention, TaskWeights


@dataclass
class BLOSettings:
    """Phase-1 settings (docs/method.md; the paper's defaults)."""

    hypergradient: str = "darts"
    hypergradient_iterations: int | None = None
    hypergradient_alpha: float | None = None
    hypergradient_radius: float | None = None
    hypergradient_options: dict | str | None = None  # any option of the method by name (hypergradient_config)
    unroll_steps: int = 1
    epochs: float = 3.0
    lower_lr: float = 2e-5
    lower_weight_decay: float = 0.01
    lower_warmup_ratio: float = 0.1
    lower_clip: float = 5.0
    upper_lr: float = 2e-3
    upper_warmup_ratio: float = 0.1
    levels: int = 2
    data_weight_lr: float = 1e-2
    skip_nonfinite: int = 0  # updates with a NaN/Inf gradient that may be skipped (then: stop)
    extra: dict = field(default_factory=dict)


def quiet_betty() -> None:
    """Betty logs every problem's set-up at INFO on stdout; keep the CLI's output readable."""
    from betty.logging.logger_base import get_logger

    get_logger().setLevel(logging.WARNING)


def adam(params, lr: float, weight_decay: float):
    """AdamW that survives Betty's optimizer rebuild (torch's AdamW does not: betty-notes item 5)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)


def upper_config(**kwargs) -> Config:
    """Config for a problem whose loss uses its own parameters directly (betty-notes items 2, 3)."""
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
    unroll_steps = 1
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
        from .checkpoint import restore_rng

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
    lost (docs/three-levels.md). The bottom steps first, then the middle, then the top.
    """
    return {middle: [bottom], top: [bottom]}, {bottom: [middle, top], middle: [top]}


def build_engine(model, mixup, d1_loader, d2_loader, settings: BLOSettings, *, device: str, train_iters: int,
                 d1_ids=None, top_loader=None) -> ProgressEngine:
    """The Betty graph: u2l {attention: [weights]}, l2u {weights: [attention]}; with settings.levels == 3
    a data-weighting node on top (three_level_dependencies), whose ids are d1_ids (D1's 'idx' column)."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    quiet_betty()
    upper_steps = max(1, train_iters // settings.unroll_steps)
    # Built on the same groups TaskWeights.param_groups() hands Betty, so the scheduler's per-group
    # lambdas survive Betty's rebuild of optimizer and scheduler.
    lower_groups = default_param_groups(model.named_parameters(), settings.lower_weight_decay, settings.lower_lr)
    lower_optimizer = adam(lower_groups, settings.lower_lr, settings.lower_weight_decay)
    lower_scheduler = get_linear_schedule_with_warmup(
        lower_optimizer, int(settings.lower_warmup_ratio * train_iters), train_iters)
    lower_config = hypergradient_config(
        settings.hypergradient, iterations=settings.hypergradient_iterations, alpha=settings.hypergradient_alpha,
        radius=settings.hypergradient_radius, options=settings.hypergradient_options, unroll_steps=settings.unroll_steps,
        gradient_clipping=settings.lower_clip)
    upper_optimizer = adam(mixup.parameters(), settings.upper_lr, 0.0)
    upper_scheduler = get_cosine_schedule_with_warmup(
        upper_optimizer, int(settings.upper_warmup_ratio * upper_steps), upper_steps)

    three_levels = settings.levels == 3
    weights = TaskWeights("weights", lower_config, model, lower_optimizer, lower_scheduler, d1_loader,
                          weight_decay=settings.lower_weight_decay, lr=settings.lower_lr,
                          example_weights="data" if three_levels else None)
    # In three levels the attention is also a lower problem (of the data weights): its Config then
    # carries the hypergradient used through it. A finite difference is the only kind Betty allows
    # there; darts-plain (identity, a unit step) is the form checked against unrolled finite
    # differences (docs/three-levels.md), and it does not depend on the attention optimizer's state.
    attention_config = (hypergradient_config("darts-plain", retain_graph=True, first_order=True) if three_levels
                        else upper_config())
    attention = MixupAttention("attention", attention_config, mixup, upper_optimizer, upper_scheduler, d2_loader)
    problems = [weights, attention]
    u2l = {attention: [weights]}
    l2u = {weights: [attention]}
    if three_levels:
        if d1_ids is None:
            raise ValueError("three levels need d1_ids, the ids ('idx' column) of the D1 examples")
        example_weights = ExampleWeights(len(d1_ids), ids=d1_ids)
        data_optimizer = adam(example_weights.parameters(), settings.data_weight_lr, 0.0)
        data = DataWeighting("data", upper_config(), example_weights, data_optimizer, None, top_loader or d2_loader, model=model)
        problems.append(data)
        u2l, l2u = three_level_dependencies(weights, attention, data)
    for problem in problems:
        problem.skip_nonfinite = settings.skip_nonfinite
    engine = ProgressEngine(
        problems=problems,
        config=EngineConfig(train_iters=train_iters, logger_type="none",
                            strategy="distributed" if world_size() > 1 else "gpu" if device.startswith("cuda") else "cpu"),
        device=device,
        dependencies={"u2l": u2l, "l2u": l2u},
    )
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
    engine.stage, engine.unroll_steps = stage, settings.unroll_steps
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
        if settings.levels == 3:
            example_weights = engine.data.module
            values = example_weights.weights().detach()
            # Every D1 example's learned weight by its dataset id (JSON keys: strings), and a summary.
            stats["example_weights"] = {"mean": float(values.mean()), "std": float(values.std()),
                                        "min": float(values.min()), "max": float(values.max()),
                                        "by_id": {i: float(w) for i, w in zip(example_weights.ids, values.tolist())}}
        if stage is not None:
            stage.finish(model, mixup, stats)
    return stats
