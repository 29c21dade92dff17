"""--heldout-size: a GLUE run scored on training rows outside its subsample instead of the dev set, so that a
protocol or a method's options can be chosen without looking at the dev set that the tables report."""

import csv
import json

import pytest

from blo_mixup.cli import main
from blo_mixup.config import RunConfig
from blo_mixup.data import get_task, heldout_sample, load_glue, subsample
from blo_mixup.datafiles import load_task_data
from blo_mixup.metrics import constant_prediction_score


def test_the_heldout_rows_are_outside_the_subsample_and_are_the_curves_rows(glue_dir):
    task = get_task("rte")
    train = load_glue(task, glue_dir)["train"]
    for seed in (1, 2):
        data = load_task_data(RunConfig(task="rte", data_dir=str(glue_dir), train_size=32, heldout_size=40, seed=seed))
        taken = subsample(train, 32, seed, task)
        held = data.evaluation["idx"][:]
        assert len(held) == 40 and not set(held) & set(taken["idx"][:])
        assert held == heldout_sample(train, taken, 40, seed, task)["idx"][:]  # as `blo-mixup curves` draws them
        assert data.evaluation_set == f"held out from the GLUE train split: 40 rows outside seed {seed}'s subsample (stratified), not the dev set"
        assert len(data.train) == len(train)  # the subsample is still drawn from every training row
    dev = load_task_data(RunConfig(task="rte", data_dir=str(glue_dir)))
    assert dev.evaluation_set.startswith("the GLUE dev set") and len(dev.evaluation) == 80  # the fixture's dev rows


def test_finetune_scores_the_heldout_rows(glue_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", "--task", "rte", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir), "--train-size", "32",
                 "--heldout-size", "40", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--output-dir", str(out),
                 "--no-save-model", "--report-to", "none"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["evaluation_size"] == 40 and "not the dev set" in results["evaluation_set"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    taken = subsample(load_glue("rte", glue_dir)["train"], 32, 1, "rte")
    assert len(rows) == 40 and not {int(r["row"]) - 1 for r in rows} & set(taken["idx"][:])


@pytest.mark.parametrize("args, message", [
    (["finetune", "--train-file", "x.csv", "--heldout-size", "40"], "--heldout-size holds out GLUE training examples"),
    (["finetune", "--task", "rte", "--heldout-size", "0"], "--heldout-size must be at least 1; got 0"),
    (["compare", "--tasks", "rte", "--methods", "vanilla,vanilla+heldout-size=40"], "'heldout_size' cannot differ between methods"),
])
def test_heldout_size_refuses_what_cannot_work(args, message, tmp_path, capsys):
    assert main([*args, "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_compare_on_heldout_rows_says_so_and_scores_the_constant_there(glue_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--tasks", "rte", "--methods", "vanilla", "--seeds", "1-2", "--train-size", "16", "--heldout-size", "41",
                 "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--data-dir", str(glue_dir),
                 "--model", str(tiny_bert_dir), "--output-dir", str(out), "--no-save-model"]) == 0
    summary = (out / "summary.md").read_text()
    assert summary.startswith("Scored on 41 held-out training examples per seed (--heldout-size), not on the dev set.")
    constant = [constant_prediction_score("rte", load_task_data(RunConfig(task="rte", data_dir=str(glue_dir), train_size=16,
                                                                          heldout_size=41, seed=s)).evaluation) for s in (1, 2)]
    assert f"scores: rte {50 * sum(constant):.2f}." in summary
