"""One fine-tuning run, end to end: data, model, the method's training, dev metrics, saved outputs."""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__, distributed
from .checkpoint import Checkpointer
from .config import RunConfig, small_model_lr, to_dict, validate_run_config
from .errors import UserError
from .runs import MODEL_DIR, RESULTS, prepare_output_dir, save_pretrained_atomic, write_json_atomic
from .training import NonFiniteError, RunContext, evaluate


def default_output_dir(run: RunConfig) -> Path:
    return Path("runs") / f"{run.task}-{run.method}-s{run.seed}"


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_context(run: RunConfig, method, output_dir: Path):
    """Load data and model for `run`; returns (model, context)."""
    from transformers import set_seed

    from .data import get_task, load_glue, subsample
    from .models import count_parameters, load_model_and_tokenizer

    task = get_task(run.task)
    glue = load_glue(task, run.data_dir)
    train_raw = subsample(glue["train"], run.train_size or None, run.seed, task)
    set_seed(run.seed)  # the new task head's initialisation depends on the seed only
    model, tokenizer = load_model_and_tokenizer(run.model, task, **method.model_kwargs())
    lr = run.lr if run.lr is not None else small_model_lr(count_parameters(model))
    ctx = RunContext(run=run, task=task, tokenizer=tokenizer, train_raw=train_raw, train=None, dev=None,
                     device=pick_device(run.device), output_dir=output_dir, lr=lr)
    ctx.train = ctx.tokenize(train_raw)
    ctx.dev = ctx.tokenize(glue["validation"])
    return model, ctx


def run_finetune(run: RunConfig, method) -> dict[str, Any]:
    """Fine-tune with `method` (a methods.Method), evaluate on dev, write results.json and the model."""
    from transformers import set_seed

    from .data import get_task

    validate_run_config(run)
    get_task(run.task)  # an unknown task fails before anything is written
    processes = device = None
    if run.strategy == "distributed":
        processes, device = distributed.start(run.device)
    output_dir = prepare_output_dir(run.output_dir or default_output_dir(run), run.overwrite, run.resume)
    checkpoints = None
    if run.save_steps > 0 or run.resume:
        run_values = {**to_dict(run), "method_options": dataclasses.asdict(method.options)}
        checkpoints = Checkpointer.for_run(output_dir, run_values, save_steps=run.save_steps, resume=run.resume)
    started = time.perf_counter()
    model, ctx = build_context(run, method, output_dir)
    ctx.checkpoints, ctx.processes = checkpoints, processes
    ctx.device = device or ctx.device
    set_seed(run.seed)
    model = method.prepare_model(model, ctx)
    train_started = time.perf_counter()
    try:
        stats = method.fit(model, ctx)
    except NonFiniteError as error:
        last = checkpoints.last_good() if checkpoints else "none (--save-steps 0)"
        raise UserError(f"{error}; last good checkpoint: {last}. Lower --lr (now {ctx.lr:g}) or --outer-lr and "
                        f"start over with --overwrite, or skip such steps: --resume --skip-nonfinite N") from None
    train_time = time.perf_counter() - train_started
    if processes is not None and not processes.is_main:  # rank 0 evaluates and writes
        distributed.stop()
        return None
    model = method.finalize_model(model)
    metrics = evaluate(model, ctx)
    if run.save_model:
        save_pretrained_atomic(model, ctx.tokenizer, output_dir / MODEL_DIR)
    results = {
        "task": ctx.task.name,
        "method": method.name,
        "seed": run.seed,
        "train_size": len(ctx.train),
        "weight_updates": method.weight_updates(stats),
        "metrics": metrics,
        "main_metric": ctx.task.main_metric,
        "main_score": metrics[ctx.task.main_metric],
        "train_time_s": round(train_time, 3),
        "total_time_s": round(time.perf_counter() - started, 3),
        "lr": ctx.lr,
        "training": stats,
        **method.results(),
        "config": {**to_dict(run), "output_dir": str(output_dir), "method_options": dataclasses.asdict(method.options)},
        "model_dir": MODEL_DIR if run.save_model else None,
        "environment": {**environment(ctx.device), "processes": processes.world_size if processes else 1},
    }
    write_json_atomic(output_dir / RESULTS, results)
    if checkpoints is not None:
        checkpoints.remove()  # the run is complete: results.json and the model are what it keeps
    if processes is not None:
        distributed.stop()
    return results


def environment(device) -> dict[str, str]:
    import betty
    import transformers

    return {
        "blo_mixup": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "betty": getattr(betty, "__version__", "0.2.1"),
        "python": platform.python_version(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": str(torch.get_num_threads()),
    }
