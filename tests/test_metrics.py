"""blo_mixup.metrics and the evaluate module it loads by path: values equal scikit-learn / scipy."""

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef  # noqa: E402

from blo_mixup import metrics  # noqa: E402
from blo_mixup.data import TASKS  # noqa: E402

RNG = np.random.default_rng(0)
# Fixed inputs: 200 binary predictions right ~70% of the time, 3-class logits, and noisy scores.
BINARY_REFS = RNG.integers(0, 2, 200)
BINARY_PREDS = np.where(RNG.random(200) < 0.7, BINARY_REFS, 1 - BINARY_REFS)
THREE_REFS = RNG.integers(0, 3, 150)
THREE_LOGITS = RNG.normal(size=(150, 3)) + 1.5 * np.eye(3)[THREE_REFS]
SCORE_REFS = RNG.uniform(0, 5, 120).astype(np.float32)
SCORE_PREDS = (SCORE_REFS + RNG.normal(0, 1.2, 120)).astype(np.float32)


@pytest.fixture(autouse=True)
def private_module_cache(tmp_path_factory, monkeypatch):
    """evaluate copies the metric script into its modules cache; keep that out of the user's."""
    import evaluate

    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.getbasetemp() / "hf-modules")


def expected(task, predictions, references):
    """The reference values, straight from scikit-learn / scipy."""
    every = {
        "accuracy": lambda: accuracy_score(references, predictions),
        "f1": lambda: f1_score(references, predictions),
        "matthews_correlation": lambda: matthews_corrcoef(references, predictions),
        "pearson": lambda: pearsonr(predictions, references)[0],
        "spearmanr": lambda: spearmanr(predictions, references)[0],
    }
    return {name: float(every[name]()) for name in TASKS[task].metrics}


@pytest.mark.parametrize("task", ["rte", "mrpc", "qqp", "cola", "sst2", "qnli", "wnli"])
def test_binary_tasks_match_sklearn(task):
    result = metrics.compute_metrics(task, BINARY_PREDS, BINARY_REFS)
    assert list(result) == list(TASKS[task].metrics)
    assert all(type(value) is float for value in result.values())
    assert result == pytest.approx(expected(task, BINARY_PREDS, BINARY_REFS), abs=1e-12)
    assert 0.2 < min(abs(v) for v in result.values()) < 0.9  # inputs that tell the metrics apart


def test_logits_are_argmaxed():
    result = metrics.compute_metrics("mnli", THREE_LOGITS, THREE_REFS)
    assert result == pytest.approx({"accuracy": accuracy_score(THREE_REFS, THREE_LOGITS.argmax(1))}, abs=1e-12)
    assert metrics.compute_metrics("rte", np.eye(2)[BINARY_PREDS] * 3.0, BINARY_REFS) == pytest.approx(
        expected("rte", BINARY_PREDS, BINARY_REFS), abs=1e-12)


def test_stsb_matches_scipy_for_flat_and_column_predictions():
    want = expected("stsb", SCORE_PREDS, SCORE_REFS)
    assert metrics.compute_metrics("stsb", SCORE_PREDS, SCORE_REFS) == pytest.approx(want, abs=1e-6)
    assert metrics.compute_metrics("sts-b", SCORE_PREDS[:, None], SCORE_REFS.tolist()) == pytest.approx(want, abs=1e-6)
    assert 0.5 < want["pearson"] < 0.95


def test_evaluate_module_loaded_by_path_offline():
    import evaluate

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    module = metrics.load_metric("MRPC")
    assert isinstance(module, evaluate.EvaluationModule)
    assert module.config_name == "mrpc"
    assert module.compute(predictions=BINARY_PREDS, references=BINARY_REFS) == pytest.approx(
        expected("mrpc", BINARY_PREDS, BINARY_REFS), abs=1e-12)
    # the same module through evaluate's own loader, as a user would load it
    direct = evaluate.load(str(metrics.METRIC_MODULE_PATH), config_name="stsb", keep_in_memory=True)
    direct.add_batch(predictions=SCORE_PREDS[:60], references=SCORE_REFS[:60])
    direct.add_batch(predictions=SCORE_PREDS[60:], references=SCORE_REFS[60:])
    assert direct.compute() == pytest.approx(expected("stsb", SCORE_PREDS, SCORE_REFS), abs=1e-6)
    # the hub's extra MNLI configs and keys
    assert set(evaluate.load(str(metrics.METRIC_MODULE_PATH), config_name="mnli_mismatched",
                             keep_in_memory=True).compute(predictions=[0, 2], references=[0, 1])) == {"accuracy"}


def test_unknown_config_is_refused():
    import evaluate

    with pytest.raises(KeyError, match="unknown GLUE metric config 'squad'"):
        evaluate.load(str(metrics.METRIC_MODULE_PATH), config_name="squad", keep_in_memory=True)


@pytest.mark.parametrize("task, predictions, references", [
    ("cola", [1, 1, 1, 1], [0, 1, 0, 1]),  # a model that predicts one class
    ("cola", [0, 1, 0, 1], [1, 1, 1, 1]),  # a dev set of one class
    ("stsb", [2.5, 2.5, 2.5, 2.5], [0.0, 1.0, 4.0, 5.0]),
    ("mrpc", [0, 0, 0, 0], [0, 1, 0, 1]),  # no positive predictions: F1 0
    ("mrpc", [0, 0, 0, 0], [0, 0, 0, 0]),  # no positives at all: F1 is 0/0
])
def test_undefined_values_are_zero_and_quiet(task, predictions, references):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        result = metrics.compute_metrics(task, predictions, references)
    correlation_keys = {"matthews_correlation", "pearson", "spearmanr", "f1"} & set(result)
    assert correlation_keys and all(result[key] == 0.0 for key in correlation_keys)


def test_every_task_reports_its_metrics_and_main_metric():
    for name, task in TASKS.items():
        if task.is_regression:
            result = metrics.compute_metrics(name, SCORE_PREDS, SCORE_REFS)
        else:
            result = metrics.compute_metrics(name, BINARY_PREDS, BINARY_REFS)
        assert list(result) == list(task.metrics)
        assert metrics.main_metric_value(name, result) == result[task.main_metric]
    assert metrics.main_metric_value("mrpc", {"accuracy": 0.7, "f1": 0.8}) == 0.8
    with pytest.raises(KeyError, match="spearmanr"):
        metrics.main_metric_value("stsb", {"pearson": 0.5})
