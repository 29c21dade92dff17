"""`blo_mixup.fit`: one fine-tuning run from Python, with the same options as `blo-mixup finetune`.

The options are resolved by the code that resolves the command's flags and config files
(options.resolve_options, from the dataclasses config.RunConfig and each method's options class), the data by
the code that reads `--train-file` (datafiles.task_data_from_tables), and the run is finetune's. Heavy
imports (torch, transformers, datasets) happen inside `fit`, so `import blo_mixup` stays light.
docs/python-api.md describes it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

# Options that say where the data comes from: fit takes the data itself, as train= and eval=.
DATA_SOURCE_OPTIONS = ("task", "data_dir", "train_file", "validation_file", "dataset", "dataset_config")
OPTIONS_HINT = "see docs/python-api.md or `blo-mixup finetune --help` (flags with underscores) for the valid names"


@dataclass(repr=False)
class FitResult:
    """What `fit` returns.

    model: the fine-tuned model, merged: a plain transformers *ForSequenceClassification model (no weight
        mixup left in it; `save_pretrained` works), in eval mode, on the device it was trained on. Its
        config's id2label / label2id are your labels (classification) or problem_type "regression".
    tokenizer: its tokenizer.
    metrics: every metric on the evaluation set, e.g. {"accuracy": 0.75, "macro_f1": 0.7, ...}.
    attention: for the blo-mixup methods, the learned mixup attention A per mixed weight,
        {module name: {"mean", "std", "min", "max"}} (WeightMixup.attention_stats()); None for methods
        without mixup.
    results: the run's results.json as a dict (task, labels, main_metric, main_score, evaluation_set,
        training statistics, the full resolved configuration, ...).
    output_dir: the run folder (results.json, predictions.csv, model/ unless save_model=False).
    """

    model: Any
    tokenizer: Any
    metrics: dict[str, float]
    attention: dict[str, dict[str, float]] | None
    results: dict[str, Any]
    output_dir: Path

    def __repr__(self) -> str:
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        attention = "None" if self.attention is None else f"<{len(self.attention)} mixed weights>"
        return (f"FitResult(model={type(self.model).__name__}, metrics={{{metrics}}}, attention={attention}, "
                f"output_dir='{self.output_dir}')")


def fit(model, train, eval=None, *, method: str = "blo-mixup", output_dir: str | os.PathLike | None = None,
        tokenizer=None, **options) -> FitResult:
    """Fine-tune `model` on `train` with `method`, evaluate it, and return the merged model and its metrics.

    model: "minilm" (the packaged all-MiniLM-L6-v2), a hub name, a model folder (as `--model`), or a
        transformers PreTrainedModel. A model object is saved to a temporary folder and loaded from there
        the way `--model FOLDER` is: its encoder is kept, its classification head is kept when its size
        fits your labels and replaced by a new one (seeded by `seed`) when it does not, and its config gets
        your labels. The object you pass is not changed; FitResult.model is a new one. Its tokenizer is
        `tokenizer` (an object, a name or a path) or, by default, loaded from `model.name_or_path`.
    train: the training data: a pandas DataFrame, a datasets.Dataset, or the path of a .csv, .tsv, .json,
        .jsonl or .parquet file. It is checked exactly as `--train-file` is (docs/data.md): the labels are
        the values found in it (stable order), regression when a label is a non-integer number (or
        problem_type="regression"), and bad data raises a UserError naming the row and the fix.
    eval: the evaluation data, same kinds and columns; default: validation_ratio (0.2) of `train`'s rows,
        held out, stratified.
    method: a fine-tuning method, as `--method` (`blo-mixup methods` lists them); default "blo-mixup", the
        core method (the command's default is "vanilla"); "vanilla" is plain fine-tuning.
    output_dir: the run folder; default: a fresh temporary folder (tempfile.mkdtemp, prefix
        "blo-mixup-fit-"), which is not deleted: FitResult.output_dir names it.
    **options: `blo-mixup finetune`'s options with underscores: the run's (text_columns, label_column,
        problem_type, metric, validation_ratio, test_file, lr, epochs, batch_size, seed, train_size,
        max_length, ...) and the chosen method's (blo-mixup: hypergradient, unroll_steps, upper_lr, ...).
        text_columns may be a list ["premise", "hypothesis"] or a string "premise,hypothesis". An unknown
        name, or an option of another method, raises a UserError naming the closest valid name or the
        method it belongs to, as the command does. The options that name a data source (task,
        train_file, dataset, ...) are refused: the data is train= and eval=.

    Raises blo_mixup.UserError for every mistake a user can fix, before anything is written.
    """
    from .options import check_option_names, resolve_options
    from .config import validate_run_config
    from .datafiles import data_name, in_memory_table, task_data_from_tables
    from .finetune import finetune_with_model
    from .runs import RESULTS, write_json_atomic

    check_option_names(options, "fit()", OPTIONS_HINT)
    named = [key for key in DATA_SOURCE_OPTIONS if key in options]
    if named:
        raise UserError(f"option '{named[0]}' names where the data comes from; fit() takes the data itself: pass "
                        f"train= (and eval=) as a DataFrame, a datasets.Dataset or a file path")
    if train is None:
        raise UserError("no training data; pass train= as a DataFrame, a datasets.Dataset or a file path")
    if options.get("strategy", "default") != "default":
        raise UserError("fit() trains in one process; for strategy 'distributed' run `torchrun ... blo-mixup "
                        "finetune --strategy distributed` (docs/robustness.md)")
    values = dict(options)
    if isinstance(values.get("text_columns"), (list, tuple)):
        values["text_columns"] = ",".join(str(column) for column in values["text_columns"])
    model_object = None if isinstance(model, (str, os.PathLike)) else model
    if model_object is None and tokenizer is not None:
        raise UserError("tokenizer= goes with a model object; a model name or folder brings its own tokenizer")
    if isinstance(train, (str, os.PathLike)):
        values["train_file"] = str(train)  # recorded in results.json, and names the run's data
    if isinstance(eval, (str, os.PathLike)):
        values["validation_file"] = str(eval)
    values.update(method=method, model=str(model) if model_object is None else "minilm",
                  output_dir=None if output_dir is None else str(output_dir))
    run, method_obj = resolve_options(values, python=True)
    validate_run_config(run, data_given=True)
    if model_object is not None:
        _check_model_object(model_object)

    # The data, checked before anything is written, exactly as --train-file's.
    train_table = in_memory_table(train, "train")
    eval_table = in_memory_table(eval, "eval") if eval is not None else None
    name = data_name(run) if run.train_file else "data"
    data = task_data_from_tables(run, name, train_table, eval_table)

    import tempfile

    with tempfile.TemporaryDirectory(prefix="blo-mixup-model-") as model_dir:
        if model_object is not None:
            _save_model_object(model_object, tokenizer, Path(model_dir))
            run = dataclasses.replace(run, model=model_dir)
            method_obj.run = run
        if run.output_dir is None:
            run = dataclasses.replace(run, output_dir=tempfile.mkdtemp(prefix="blo-mixup-fit-"))
            method_obj.run = run
        results, final_model, ctx = finetune_with_model(run, method_obj, data)
    output = Path(run.output_dir)
    if model_object is not None:  # not the temporary folder, gone now
        source = getattr(model_object, "name_or_path", "") or "built in Python"
        results["config"]["model"] = f"<{type(model_object).__name__} given to fit(), from {source}>"
        write_json_atomic(output / RESULTS, results)
    attention = results.get("blo", {}).get("attention")
    return FitResult(model=final_model, tokenizer=ctx.tokenizer, metrics=dict(results["metrics"]),
                     attention=attention, results=results, output_dir=output)


def _check_model_object(model) -> None:
    from transformers import PreTrainedModel

    from .blo.mixup import is_mixed

    if not isinstance(model, PreTrainedModel):
        raise UserError(f"model is a {type(model).__name__}; pass 'minilm', a hub name, a model folder or a "
                        f"transformers PreTrainedModel")
    if is_mixed(model):
        raise UserError("the model still has weight mixup attached; pass merge_weight_mixup(model), a plain "
                        "transformers model")


def _save_model_object(model, tokenizer, folder: Path) -> None:
    """The model and its tokenizer in `folder`, for the loader that `--model FOLDER` uses."""
    from transformers import AutoTokenizer

    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        source = str(tokenizer) if tokenizer is not None else getattr(model, "name_or_path", "")
        if not source:
            raise UserError("the model has no name_or_path to load its tokenizer from; pass tokenizer= "
                            "(a tokenizer, a hub name or a folder)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"could not load the tokenizer from '{source}' ({first}); pass tokenizer= "
                            f"(a tokenizer, a hub name or a folder)") from None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
