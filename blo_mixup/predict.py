"""A fine-tuned model's predictions for the rows of a data file (the `predict` command's work), and the
prediction columns that `finetune` writes for its evaluation set (predictions.csv).

Classification: `prediction` is a label of the model's own set (config.id2label, the user's labels)
and `prob_<label>` the softmax probability of each label; regression: `prediction` is the score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import TaskSpec, get_task, is_glue_name
from .errors import UserError
from .runs import MODEL_DIR, RESULTS, read_results, write_text_atomic

OUTPUT_FORMATS = (".csv", ".tsv", ".jsonl")


def _floats(values) -> list[float]:
    """float32 values as the numbers they hold (0.2857143, not 0.2857142984867096)."""
    return [float(f"{v:.7g}") for v in values]


def prediction_columns(task: TaskSpec, outputs: np.ndarray) -> dict[str, list]:
    """`prediction` (a label name, or a score) and, for classification, `prob_<label>` per label."""
    if task.is_regression:
        return {"prediction": _floats(outputs.reshape(-1))}
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    columns = {"prediction": [task.label_names[i] for i in outputs.argmax(axis=1)]}
    columns.update({f"prob_{label}": _floats(probabilities[:, i]) for i, label in enumerate(task.label_names)})
    return columns


def evaluation_table(task: TaskSpec, rows, outputs: np.ndarray, label_column: str = "label"):
    """The rows of an evaluation (or test) set with their predictions: `row` (the row in its file, from
    1), the text columns, the gold label or score (when the rows have one), then prediction_columns."""
    import pandas as pd

    table = pd.DataFrame({"row": [i + 1 for i in rows["idx"][:]], **{c: rows[c][:] for c in task.text_columns}})
    if "label" in rows.column_names:
        gold = rows["label"][:]
        table[label_column] = _floats(gold) if task.is_regression else [task.label_names[i] for i in gold]
    for name, values in prediction_columns(task, outputs).items():
        table[name] = values
    return table


def write_table(table, path: str | Path) -> None:
    """A pandas table as CSV, TSV or JSONL (by the file's suffix), written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        text = table.to_json(orient="records", lines=True, force_ascii=False)
    else:
        text = table.to_csv(index=False, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _model_folder(path: Path) -> tuple[Path, dict]:
    """(the model folder, the run's results.json or {}) of a run folder or a plain model folder."""
    if (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR, read_results(path) if (path / RESULTS).is_file() else {}
    if (path / "config.json").is_file():
        return path, {}
    raise UserError(f"'{path}' holds no model ({MODEL_DIR}/config.json or config.json); pass a run folder of "
                    f"`blo-mixup finetune` (run without --no-save-model) or a model folder (save_pretrained)")


def _text_columns(option: str | None, results: dict, model_dir: Path, found: list[str]) -> tuple[str, ...]:
    if option:
        columns = tuple(c.strip() for c in option.split(",") if c.strip())
        if not 1 <= len(columns) <= 2:
            raise UserError(f"--text-columns '{option}' must name one or two columns, like text or premise,hypothesis")
        return columns
    if results.get("text_columns"):
        return tuple(results["text_columns"])
    if results.get("task") and is_glue_name(results["task"]):  # a run from before results.json named them
        return get_task(results["task"]).text_columns
    raise UserError(f"'{model_dir}' does not say which columns hold the text; pass --text-columns with one or two "
                    f"columns of --file (found: {', '.join(found)})")


def predict_file(model_path: str | Path, file: str | Path, output: str | Path, *, text_columns: str | None = None,
                 batch_size: int = 64, max_length: int | None = None, device: str | None = None,
                 overwrite: bool = False) -> int:
    """Write the rows of `file` with their predictions to `output`; returns the number of rows."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from .config import RunConfig, check_positive
    from .datafiles import check_columns, make_dataset, read_table, read_texts
    from .training import RunContext, model_outputs

    output = Path(output)
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(f"--output '{output}' must end in .csv, .tsv or .jsonl; choose the file name")
    if output.exists() and not overwrite:
        raise UserError(f"--output '{output}' already exists; pass --overwrite to replace it or choose another file")
    check_positive("batch_size", batch_size)
    check_positive("max_length", max_length)
    model_dir, results = _model_folder(Path(model_path))
    table = read_table(file, "--file")
    columns = _text_columns(text_columns, results, model_dir, table.column_names)
    check_columns(table, f"'{file}'", list(columns))

    config = AutoConfig.from_pretrained(model_dir)
    regression = config.problem_type == "regression" or config.num_labels == 1
    labels = None if regression else tuple(str(config.id2label[i]) for i in sorted(config.id2label, key=int))
    task = TaskSpec("predict", "", columns, labels, regression, "", (), "", source="data")
    rows = make_dataset(read_texts(table, columns, f"'{file}'"), None, task)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise UserError(f"could not load the model in '{model_dir}' ({str(error).strip().splitlines()[0]}); "
                        f"pass a run folder or a model folder written by save_pretrained") from None
    max_length = max_length or results.get("config", {}).get("max_length") or RunConfig.max_length
    run = RunConfig(eval_batch_size=batch_size, max_length=max_length)
    ctx = RunContext.create(run, task, tokenizer, device=device, output_dir=output.parent)
    outputs, _ = model_outputs(model, ctx, ctx.tokenize(rows), desc="predict")
    frame = table.to_pandas()
    for name, values in prediction_columns(task, outputs).items():
        frame[name] = values
    write_table(frame, output)
    return len(frame)
