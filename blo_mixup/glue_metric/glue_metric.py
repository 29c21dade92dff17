"""GLUE metrics as an `evaluate` module that works offline.

A drop-in for the hub's `evaluate.load("glue", task)`: the same config names (one per GLUE task, plus
the hub's "mnli_matched" / "mnli_mismatched") and the same result keys ("accuracy", "f1",
"matthews_correlation", "pearson", "spearmanr"), computed with scikit-learn and scipy. It ships
inside blo_mixup and is loaded by path (`blo_mixup.metrics.load_metric`), so it needs no network.

Unlike the hub's module, undefined correlations return 0.0 instead of NaN: Matthews correlation,
Pearson and Spearman are 0/0 when the predictions (or references) are constant, which happens
early in training on small datasets (a model that predicts one class). 0.0 is "no correlation",
the value that the mean over seeds should count, and NaN would poison that mean.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_DESCRIPTION = """GLUE metrics (accuracy, binary F1, Matthews correlation, Pearson, Spearman) per task,
computed with scikit-learn / scipy; the same keys as the hub's `glue` metric."""

_CITATION = """@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={ICLR},
  year={2019}
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class indices (int) for classification tasks, scores (float) for "stsb".
    references: gold class indices, or gold scores for "stsb".
Returns, by config name:
    "cola": {"matthews_correlation"}
    "mrpc", "qqp": {"accuracy", "f1"} (F1 of the positive class 1)
    "stsb": {"pearson", "spearmanr"}
    "sst2", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli": {"accuracy"}
    Every value is a plain Python float; undefined correlations (constant inputs) are 0.0.
Example:
    >>> metric = evaluate.load("path/to/glue_metric", config_name="mrpc")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.666..., 'f1': 0.666...}
"""

# Which metrics each config reports (the hub's glue metric's keys).
METRICS_BY_CONFIG = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def _is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def accuracy(predictions, references) -> float:
    return float(accuracy_score(references, predictions))


def f1(predictions, references) -> float:
    # zero_division=0: no predicted and no true positives gives 0.0 without a warning.
    return float(f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews_correlation(predictions, references) -> float:
    if _is_constant(np.asarray(predictions)) or _is_constant(np.asarray(references)):
        return 0.0  # 0/0: sklearn also gives 0.0 here, but checking first keeps it quiet
    return float(matthews_corrcoef(references, predictions))


def pearson(predictions, references) -> float:
    predictions, references = np.asarray(predictions, float), np.asarray(references, float)
    if _is_constant(predictions) or _is_constant(references):
        return 0.0  # scipy would warn and return NaN
    return float(pearsonr(predictions, references)[0])


def spearman(predictions, references) -> float:
    predictions, references = np.asarray(predictions, float), np.asarray(references, float)
    if _is_constant(predictions) or _is_constant(references):
        return 0.0  # scipy would warn and return NaN
    return float(spearmanr(predictions, references)[0])


_METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearman,
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    """The GLUE metric of one task, chosen by `config_name` (e.g. "rte", "stsb")."""

    def _info(self):
        if self.config_name not in METRICS_BY_CONFIG:
            raise KeyError(
                f"unknown GLUE metric config '{self.config_name}'; "
                f"choose one of: {', '.join(sorted(METRICS_BY_CONFIG))}"
            )
        value_type = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value(value_type), "references": datasets.Value(value_type)}
            ),
            format="numpy",
        )

    def _compute(self, predictions, references):
        return {
            name: _METRIC_FUNCTIONS[name](predictions, references)
            for name in METRICS_BY_CONFIG[self.config_name]
        }
