"""The shared training loop, evaluation on the evaluation set, and what every method's training needs.

Methods plug in through their hooks (methods/base.py); nothing here knows a method by name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .errors import UserError

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "ln_", "norm.weight")


@dataclass
class RunContext:
    """Everything a method needs to train: the options, the data and where to write."""

    run: Any  # config.RunConfig
    task: Any  # data.TaskSpec
    tokenizer: Any
    train_raw: Any  # datasets.Dataset: the low-resource subsample, untokenized
    train: Any  # the same examples, tokenized
    dev: Any  # the evaluation set (GLUE: the dev set), tokenized
    device: torch.device
    output_dir: Path
    lr: float
    checkpoints: Any = None  # checkpoint.Checkpointer, or None: save nothing
    processes: Any = None  # distributed.Processes with --strategy distributed, else None

    @classmethod
    def create(cls, run, task, tokenizer, *, train_rows=None, evaluation_rows=None, device=None, output_dir=".",
               lr: float = 0.0) -> "RunContext":
        """The one way a run's context is made (finetune and fit, curves, bench, predict): the device by name
        or torch.device (default: CUDA when present, else the CPU), the rows given tokenized as the run's."""
        from .models import pick_device

        ctx = cls(run=run, task=task, tokenizer=tokenizer, train_raw=train_rows, train=None, dev=None,
                  device=pick_device(device), output_dir=Path(output_dir), lr=lr)
        if train_rows is not None:
            ctx.train = ctx.tokenize(train_rows)
        if evaluation_rows is not None:
            ctx.dev = ctx.tokenize(evaluation_rows)
        return ctx

    def tokenize(self, dataset):
        from .data import tokenize

        return tokenize(dataset, self.tokenizer, self.task, self.run.max_length)

    def loader(self, dataset, *, batch_size: int | None = None, shuffle: bool = True, seed_offset: int = 0):
        """A DataLoader with dynamic padding whose shuffling depends only on the run's seed."""
        from .data import collator

        generator = torch.Generator().manual_seed(self.run.seed * 1000 + seed_offset)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.run.batch_size,
            shuffle=shuffle,
            collate_fn=collator(self.tokenizer),
            generator=generator,
        )


    def train_loader(self, dataset, *, seed_offset: int = 0):
        """Training batches: resumable (checkpoint.py) and, on several processes, this one's slice."""
        from .checkpoint import ResumableLoader
        from .distributed import ShardedLoader

        loader = ResumableLoader(self.loader(dataset, seed_offset=seed_offset))
        if self.processes is not None and self.processes.world_size > 1:
            return ShardedLoader(loader, self.processes.rank, self.processes.world_size)
        return loader


def default_param_groups(named_parameters, weight_decay: float, lr: float) -> list[dict]:
    """AdamW's usual grouping: no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (no_decay if any(key in name for key in NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}, {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return [g for g in groups if g["params"]]


def linear_schedule(optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)


def steps_for(num_examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps of `epochs` passes over `num_examples` (a fractional epoch rounds up)."""
    return max(1, math.ceil(math.ceil(num_examples / batch_size) * epochs))


def to_device(batch: dict, device) -> dict:
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def model_inputs(batch: dict) -> dict:
    """The batch without the example ids and the process's batch share, which the model does not take."""
    return {key: value for key, value in batch.items() if key not in ("idx", "batch_share")}


def model_loss(model, batch: dict):
    """Cross-entropy, or MSE for regression (the model's config.problem_type decides)."""
    return model(**model_inputs(batch)).loss


class NonFiniteError(UserError):
    """A NaN or Inf loss or gradient; finetune adds where the last good checkpoint is."""

    def __init__(self, what: str, value, step: int, stage: str):
        self.step, self.stage = step, stage
        super().__init__(f"the {what} became {value} at step {step} of {stage}")


def iterate_batches(loader, total_steps: int, start: int = 0):
    """Yield (step, batch) for steps start+1 .. total_steps, re-iterating the loader per epoch."""
    step = start
    while step < total_steps:
        for batch in loader:
            step += 1
            yield step, batch
            if step == total_steps:
                return


def iterate_full_batches(loader, total_steps: int, start: int = 0):
    """Yield (step, every batch of one epoch) for steps start+1 .. total_steps: one step per epoch."""
    step = start
    while step < total_steps:
        chunks = list(loader)
        if chunks:  # empty: a resumed loader replaying the epoch the last saved step used up
            step += 1
            yield step, chunks


@dataclass
class Optimization:
    """The method's optimizers (Method.optimizers; default one AdamW), their schedule (None: constant
    learning rates) and clipping."""

    optimizers: list
    scheduler: Any
    params: list
    max_grad_norm: float
    skipped: int = 0  # steps skipped for a NaN/Inf loss or gradient (--skip-nonfinite)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first optimizer (for most methods, the only one)."""
        return self.optimizers[0]

    @classmethod
    def build(cls, model, method, ctx: RunContext, *, lr: float, total_steps: int, max_grad_norm: float):
        optimizers, scheduler = method.optimizers(model, ctx, lr, total_steps)
        params = [p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]]
        return cls(list(optimizers), scheduler, params, max_grad_norm)

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def schedule_step(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict:
        # "optimizer" holds the first one, as checkpoints did before methods could have several
        return {"optimizer": self.optimizer.state_dict(), "more_optimizers": [o.state_dict() for o in self.optimizers[1:]],
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for optimizer, saved in zip(self.optimizers[1:], state.get("more_optimizers", [])):
            optimizer.load_state_dict(saved)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def backward_chunks(model, method, ctx: RunContext, chunks: list[dict]) -> torch.Tensor:
    """Backpropagate the loss of `chunks` taken as one batch, chunk by chunk: each chunk's mean loss is
    weighted by its share of the rows (on several processes, of every process's rows, so that the summed
    gradients are the whole batch's). Returns the weighted loss of this process's chunks."""
    from .distributed import all_reduce_weighted, share_of

    rows = [len(chunk["labels"]) if share_of(chunk) > 0 else 0 for chunk in chunks]
    total = all_reduce_weighted([torch.tensor(float(sum(rows)))], 1.0)[0].item()
    value = 0.0
    for chunk, n in zip(chunks, rows):
        loss = method.loss(model, chunk, ctx) * (n / total)
        loss.backward()
        value += loss.item()
    return torch.tensor(value, dtype=torch.float64)  # the sum in double, as a Python float would be


def training_step(model, method, ctx: RunContext, batch, step: int, opt: Optimization,
                  stage: str = "training") -> float | None:
    """One optimizer step through the method's hooks; returns the loss (None: step skipped).

    `batch`: one batch, or a list of batches whose gradients are accumulated into one step (full-batch
    training). On several processes the gradients (and the loss) become the global batch's (distributed.py).
    """
    from .distributed import average_gradients, share_of, world_size

    method.prepare_step(model, step, ctx)
    if isinstance(batch, list):
        loss, share = backward_chunks(model, method, ctx, batch), 1.0  # chunks weighted already: sum them
    else:
        loss, share = method.loss(model, batch, ctx), share_of(batch)
        loss.backward()
    if world_size() > 1:  # every process joins the all-reduce, NaN or not, and so decides alike
        # frozen parameters (e.g. PAC-tuning's noise in stage 2) stay without a gradient
        loss = average_gradients([p for p in opt.params if p.requires_grad], share, loss.float())
    if not torch.isfinite(loss):
        return skip_nonfinite(ctx, opt, NonFiniteError("training loss", loss.item(), step, stage))
    if opt.max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(opt.params, opt.max_grad_norm)
        if not torch.isfinite(norm):
            return skip_nonfinite(ctx, opt, NonFiniteError("gradient norm", norm.item(), step, stage))
    method.before_optimizer_step(model, step, ctx)
    for optimizer in opt.optimizers:
        optimizer.step()
    opt.schedule_step()
    opt.zero_grad()
    method.after_optimizer_step(model, step, ctx)
    return loss.item()


def progress_bar(total: int, initial: int, desc: str, unit: str = "step"):
    """A tqdm bar over steps on a terminal, plain progress lines otherwise; the main process only."""
    import os
    import sys

    from .distributed import is_main_process
    from .logs import LineProgress

    if not is_main_process():
        return tqdm(total=total, initial=initial, desc=desc, disable=True)
    if not sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE"):
        return LineProgress(total, initial, desc, unit)  # a log file: plain lines, not carriage-return redraws
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)


def skip_nonfinite(ctx: RunContext, opt: Optimization, error: NonFiniteError) -> None:
    """Skip the step (no update; the schedule moves on) while --skip-nonfinite allows, else stop."""
    opt.skipped += 1
    if opt.skipped > getattr(ctx.run, "skip_nonfinite", 0):
        raise error
    opt.zero_grad()
    opt.schedule_step()
    tqdm.write(f"skipped: {error} ({opt.skipped} of at most {ctx.run.skip_nonfinite})")
    return None


def train_loop(model, method, ctx: RunContext, train_data, *, epochs: float, lr: float, max_grad_norm: float | None = None,
               desc: str = "train", steps: int | None = None, seed_offset: int = 0, eval_every: int = 0,
               full_batch: bool = False) -> dict[str, Any]:
    """Fine-tune `model` on `train_data` through `method`'s hooks: its optimizers (default AdamW with a
    linear warmup schedule), its loss, and what it does around each step.

    `steps` (optional) sets the number of optimizer steps instead of `epochs`. `seed_offset` picks the
    data order (ctx.loader). `eval_every` > 0: call method.evaluate_and_stop every that many steps and
    after the last one; it may end training early. `full_batch`: each step accumulates the gradients of
    one whole epoch, batch by batch (one step per epoch; `epochs` rounds to whole steps).

    One checkpoint stage (checkpoint.py): saves every --save-steps steps; on --resume it continues
    from the last save, or returns at once (with the saved end state) if it had finished.
    """
    from .checkpoint import restore_rng, stage_for, stop_at_next_step
    from .logs import current, stage_tag

    log, tag = current(), stage_tag(desc)

    total_steps = steps or (max(1, round(epochs)) if full_batch else steps_for(len(train_data), ctx.run.batch_size, epochs))
    opt = Optimization.build(model, method, ctx, lr=lr, total_steps=total_steps,
                             max_grad_norm=ctx.run.max_grad_norm if max_grad_norm is None else max_grad_norm)
    model.to(ctx.device).train()
    stage = stage_for(ctx, desc)
    if stage.finished:
        return stage.restore_finished(model, method)
    loader = ctx.train_loader(train_data, seed_offset=seed_offset)
    start_step, losses, elapsed = 0, [], 0.0
    if stage.state is not None:  # --resume: continue from the last save
        state = stage.state
        method.load_state_dict(state["method"])  # first: it may reshape buffers of the model
        model.load_state_dict(state["model"])
        opt.load_state_dict(state)
        loader.load_state_dict(state["loader"])
        start_step, losses, elapsed, opt.skipped = state["step"], state["losses"], state["elapsed"], state["skipped"]
        restore_rng(state["rng"])
    start = time.perf_counter()
    progress = progress_bar(total_steps, start_step, desc)
    batches = (iterate_full_batches if full_batch else iterate_batches)(loader, total_steps, start=start_step)
    last_step = start_step
    with stop_at_next_step(stage):
        for step, batch in batches:
            batch = [to_device(b, ctx.device) for b in batch] if full_batch else to_device(batch, ctx.device)
            loss = training_step(model, method, ctx, batch, step, opt, desc)
            last_step = step
            if loss is not None:
                losses.append(loss)
                progress.set_postfix(loss=f"{loss:.4f}")
                log.scalar(f"{tag}/loss", loss, step)
                log.scalar(f"{tag}/lr", opt.optimizer.param_groups[0]["lr"], step)
            progress.update(1)
            if eval_every and (step % eval_every == 0 or step == total_steps) and method.evaluate_and_stop(model, step, ctx):
                break  # the method asked to stop (early stopping): the stage ends here
            if stage.due(step) and step < total_steps:
                stage.save(step, model=model.state_dict(), method=method.state_dict(), **opt.state_dict(),
                           loader=loader.state_dict(), losses=losses, elapsed=elapsed + time.perf_counter() - start,
                           skipped=opt.skipped)
        progress.close()
        tail = losses[-max(1, len(losses) // 10):] or [math.nan]
        stats = {"steps": last_step, "train_time_s": elapsed + time.perf_counter() - start,
                 "final_train_loss": sum(tail) / len(tail)}
        if opt.skipped:
            stats["skipped_steps"] = opt.skipped
        stage.finish(model, method, stats)
    return stats


def mean_squared_gradients(model, batches, loss_fn, params: dict) -> dict:
    """Empirical Fisher: the mean over `batches` of the squared gradient of `loss_fn(model, batch)`.

    `params` maps any keys to the parameters to score; the result has the same keys. The caller sets
    train or eval mode (which decides whether dropout is on).
    """
    fisher = {key: torch.zeros_like(p) for key, p in params.items()}
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for key, p in params.items():
            if p.grad is not None:
                fisher[key] += p.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    return {key: f / max(count, 1) for key, f in fisher.items()}


@torch.no_grad()
def model_outputs(model, ctx: RunContext, dataset, desc: str = "evaluate"):
    """The model's outputs on `dataset`, in row order: a float numpy array of logits (n, labels), or of
    scores (n,) for regression; and the references (None when the rows carry no labels). Batched, with
    a progress bar."""
    import numpy as np

    was_training = model.training
    model.to(ctx.device).eval()
    outputs, references = [], []
    loader = ctx.loader(dataset, batch_size=ctx.run.eval_batch_size, shuffle=False)
    progress = progress_bar(len(loader), 0, desc, unit="batch")
    for batch in loader:
        progress.update(1)
        batch = to_device(batch, ctx.device)
        logits = model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}).logits.float()
        outputs.append((logits.squeeze(-1) if ctx.task.is_regression else logits).cpu().numpy())
        if "labels" in batch:
            references.extend(batch["labels"].cpu().tolist())
    progress.close()
    model.train(was_training)
    width = () if ctx.task.is_regression else (ctx.task.num_labels,)
    values = np.concatenate(outputs) if outputs else np.zeros((0, *width), dtype=np.float32)
    return values, (references or None)


def predict(model, ctx: RunContext, dataset) -> tuple[list, list]:
    """Predictions (class indices, or scores for regression) and references on `dataset`."""
    outputs, references = model_outputs(model, ctx, dataset)
    return (outputs if ctx.task.is_regression else outputs.argmax(-1)).tolist(), references or []


def evaluate(model, ctx: RunContext, dataset=None) -> dict[str, float]:
    """The task's metrics of `model` on the evaluation set (or `dataset`)."""
    from .metrics import compute_metrics

    predictions, references = predict(model, ctx, ctx.dev if dataset is None else dataset)
    return compute_metrics(ctx.task, predictions, references)
