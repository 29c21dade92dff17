"""One fine-tuning run, end to end: data, model, the method's training, metrics and predictions on the
evaluation set, saved outputs."""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__, distributed
from .checkpoint import Checkpointer
from .config import RunConfig, epochs_of, small_model_lr, to_dict, validate_run_config, with_train_size
from .distributed import is_main_process
from .errors import UserError
from .logs import RunLog, logging_to
from .metrics import constant_prediction_score
from .runs import LOGS, MODEL_DIR, RESULTS, prepare_output_dir, save_pretrained_atomic, write_json_atomic
from .training import NonFiniteError, RunContext, model_outputs

PREDICTIONS = "predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"


def default_output_dir(run: RunConfig) -> Path:
    from .datafiles import data_name

    return Path("runs") / f"{data_name(run)}-{run.method}-s{run.seed}"


def build_context(run: RunConfig, method, output_dir: Path, data=None):
    """Load data (unless given: a data.TaskData) and model for `run`; returns (model, context)."""
    from transformers import set_seed

    from .data import subsample
    from .datafiles import load_task_data
    from .models import count_parameters, load_model_and_tokenizer

    run = with_train_size(run)
    data = data or load_task_data(run)
    task = data.task
    train_raw = subsample(data.train, run.train_size or None, run.seed, task)
    run = dataclasses.replace(run, epochs=epochs_of(run, len(train_raw)))  # the default depends on the subsample's size
    set_seed(run.seed)  # the new task head's initialisation depends on the seed only
    model, tokenizer = load_model_and_tokenizer(run.model, task, **method.model_kwargs())
    lr = run.lr if run.lr is not None else small_model_lr(count_parameters(model))
    ctx = RunContext.create(run, task, tokenizer, train_rows=train_raw, evaluation_rows=data.evaluation,
                            device=run.device, output_dir=output_dir, lr=lr)
    return model, ctx


def run_finetune(run: RunConfig, method, data=None) -> dict[str, Any]:
    """Fine-tune with `method` (a methods.Method), evaluate on the evaluation set, write results.json, the
    evaluation set's predictions and the model. The data is read and checked before anything is written.
    data: a data.TaskData already loaded (blo_mixup.fit's in-memory data); default: the run's own."""
    outcome = finetune_with_model(run, method, data)
    return None if outcome is None else outcome[0]


def finetune_with_model(run: RunConfig, method, data=None):
    """run_finetune, returning (results, the final model: merged, in eval mode, ctx) for blo_mixup.fit;
    None on another process than rank 0 of --strategy distributed."""
    from transformers import set_seed

    from .datafiles import load_task_data

    run = with_train_size(run)
    validate_run_config(run, data_given=data is not None)
    processes = device = None
    if run.strategy == "distributed":
        processes, device = distributed.start(run.device)
    data = data if data is not None else load_task_data(run)  # bad data (or an unknown task) fails before anything is written
    output_dir = prepare_output_dir(run.output_dir or default_output_dir(run), run.overwrite, run.resume)
    checkpoints = None
    if run.save_steps > 0 or run.resume:
        run_values = {**to_dict(run), "method_options": dataclasses.asdict(method.options)}
        checkpoints = Checkpointer.for_run(output_dir, run_values, save_steps=run.save_steps, resume=run.resume)
    started = time.perf_counter()
    model, ctx = build_context(run, method, output_dir, data)
    ctx.checkpoints, ctx.processes = checkpoints, processes
    ctx.device = device or ctx.device
    set_seed(run.seed)
    model = method.prepare_model(model, ctx)
    train_started = time.perf_counter()
    log = RunLog(output_dir / LOGS, run.report_to if is_main_process() else "none")
    try:
        with logging_to(log):
            stats = method.fit(model, ctx)
    except NonFiniteError as error:
        last = checkpoints.last_good() if checkpoints else "none (--save-steps 0)"
        raise UserError(f"{error}; last good checkpoint: {last}. Lower --lr (now {ctx.lr:g}) or --upper-lr and "
                        f"start over with --overwrite, or skip such steps: --resume --skip-nonfinite N") from None
    train_time = time.perf_counter() - train_started
    if processes is not None and not processes.is_main:  # rank 0 evaluates and writes
        distributed.stop()
        return None
    model = method.finalize_model(model)
    metrics, test = _score_and_predict(model, ctx, data, output_dir)
    with logging_to(RunLog(output_dir / LOGS, run.report_to)) as final:  # appends to the same event folder
        for name, value in metrics.items():
            final.scalar(f"eval/{name}", value, method.weight_updates(stats))
    if run.save_model:
        save_pretrained_atomic(model, ctx.tokenizer, output_dir / MODEL_DIR)
    task = ctx.task
    results = {
        "task": task.name,
        "method": method.name,
        "seed": run.seed,
        "train_size": len(ctx.train),
        "weight_updates": method.weight_updates(stats),
        "metrics": metrics,
        "main_metric": task.main_metric,
        "main_score": metrics[task.main_metric],
        # what a constant prediction (the majority class; the mean score for regression) scores here
        "constant_score": constant_prediction_score(task, data.evaluation),
        "evaluation_set": data.evaluation_set,
        "evaluation_size": len(data.evaluation),
        "predictions": PREDICTIONS,
        **test,
        "problem_type": "regression" if task.is_regression else "classification",
        "labels": list(task.label_names) if task.label_names else None,
        "text_columns": list(task.text_columns),
        "train_time_s": round(train_time, 3),
        "total_time_s": round(time.perf_counter() - started, 3),
        "lr": ctx.lr,
        "epochs": ctx.run.epochs,
        "training": stats,
        "loss_history": log.loss_history(),
        "logs": LOGS if run.report_to == "tensorboard" else None,
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
    return results, model.eval(), ctx


def _score_and_predict(model, ctx: RunContext, data, output_dir: Path) -> tuple[dict, dict]:
    """The evaluation set's metrics, and predictions.csv; with a test set, its metrics (when it has labels)
    and test_predictions.csv. Returns (metrics, the test entries of results.json)."""
    from .metrics import compute_metrics
    from .predict import evaluation_table, write_table

    outputs, references = model_outputs(model, ctx, ctx.dev)
    metrics = compute_metrics(ctx.task, outputs, references)
    write_table(evaluation_table(ctx.task, data.evaluation, outputs, data.label_column), output_dir / PREDICTIONS)
    test = {}
    if data.test is not None:
        outputs, references = model_outputs(model, ctx, ctx.tokenize(data.test), desc="test")
        write_table(evaluation_table(ctx.task, data.test, outputs, data.label_column), output_dir / TEST_PREDICTIONS)
        test = {"test_metrics": compute_metrics(ctx.task, outputs, references) if references else None,
                "test_size": len(data.test), "test_predictions": TEST_PREDICTIONS}
    return metrics, test


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
