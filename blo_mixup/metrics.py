"""Metrics for evaluation: GLUE tasks through the package's own `evaluate` module, loaded by path; your
own data (datafiles.py) directly with scikit-learn and scipy.

`evaluate.load("glue", task)` needs the hub; blo_mixup/glue_metric/glue_metric.py gives the same
keys ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr") offline, computed with
scikit-learn and scipy. Your own data adds "macro_f1" (the mean of every label's F1); its "f1" (two
labels only) is the F1 of the second label in the saved order. Undefined correlations (constant
predictions, as from a model that always predicts one class) are 0.0, not NaN; see that module's
docstring.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np

from blo_mixup.data import TaskSpec, get_task

METRIC_MODULE_PATH = Path(__file__).resolve().parent / "glue_metric"

_loaded: dict[str, object] = {}  # one module per task for compute_metrics; loading costs ~10 ms each


def load_metric(task: TaskSpec | str):
    """A fresh `evaluate.EvaluationModule` for the task (config_name = the task's name).

    keep_in_memory avoids cache files and locks, and a random experiment_id keeps parallel runs
    apart should anything still touch the cache.
    """
    import evaluate  # imported here: `import evaluate` pulls in transformers (seconds)

    task = get_task(task)
    return evaluate.load(str(METRIC_MODULE_PATH), config_name=task.name, keep_in_memory=True,
                         experiment_id=uuid.uuid4().hex)


def _as_predictions(task: TaskSpec, predictions) -> np.ndarray:
    """Class indices from indices or 2-D logits; a flat float array of scores for regression."""
    values = np.asarray(predictions)
    if task.is_regression:
        return values.reshape(-1).astype(np.float32)  # (n,) or (n, 1)
    if values.ndim == 2:
        values = values.argmax(axis=-1)
    return values.astype(np.int64)


def compute_metrics(task: TaskSpec | str, predictions, references) -> dict[str, float]:
    """Every metric of task.metrics as a plain float, e.g. {"accuracy": 0.71, "f1": 0.80} for MRPC.

    predictions: class indices or logits of shape (n, num_labels) (argmax is taken); for
    regression, scores of shape (n,) or (n, 1). references: gold indices or scores.
    """
    task = get_task(task)
    references = np.asarray(references, dtype=np.float32 if task.is_regression else np.int64)
    if task.source != "glue":
        return _own_data_metrics(task, _as_predictions(task, predictions), references)
    if task.name not in _loaded:
        _loaded[task.name] = load_metric(task)
    result = _loaded[task.name].compute(predictions=_as_predictions(task, predictions), references=references)
    return {name: float(result[name]) for name in task.metrics}


def _own_data_metrics(task: TaskSpec, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """task.metrics of a task made from your own data, with scikit-learn and scipy."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    def constant(values):
        return values.size == 0 or bool(np.all(values == values[0]))

    def correlation(fn):  # 0/0 for constant inputs: 0.0 ("no correlation"), not NaN
        if constant(predictions) or constant(references):
            return 0.0
        return float(fn(predictions.astype(float), references.astype(float))[0])

    functions = {
        "accuracy": lambda: accuracy_score(references, predictions),
        "f1": lambda: f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0),
        "macro_f1": lambda: f1_score(references, predictions, average="macro", zero_division=0.0),
        "matthews_correlation": lambda: 0.0 if constant(predictions) or constant(references)
        else matthews_corrcoef(references, predictions),
        "pearson": lambda: correlation(pearsonr),
        "spearmanr": lambda: correlation(spearmanr),
    }
    return {name: float(functions[name]()) for name in task.metrics}


def main_metric_value(task: TaskSpec | str, metrics: dict) -> float:
    """The value a run is judged by (task.main_metric), e.g. F1 for MRPC."""
    task = get_task(task)
    if task.main_metric not in metrics:
        raise KeyError(f"metrics {sorted(metrics)} lack {task.main_metric}, the main metric of {task.name}")
    return float(metrics[task.main_metric])


def constant_prediction_score(task: TaskSpec | str, dev) -> float:
    """The main metric of a constant prediction on the dev set: its most frequent class, or for regression
    the mean score. A reference a low-resource table needs: a run at this value has learned nothing."""
    task = get_task(task)
    labels = np.asarray(dev["label"], dtype=np.float64 if task.is_regression else np.int64)
    if len(labels) == 0:
        raise ValueError(f"{task.name}: the dev set is empty")
    guess = labels.mean() if task.is_regression else np.bincount(labels).argmax()
    return main_metric_value(task, compute_metrics(task, np.full(len(labels), guess), labels))


def failed(score: float, constant_score: float) -> bool:
    """A run failed when its main score is at most a constant prediction's (Mosbach et al., 2021); a NaN
    score (a constant output, whose correlation is undefined) fails too."""
    return math.isnan(score) or score <= constant_score
