"""The `blo-mixup` command end to end on a tiny model: outputs, and one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blo_mixup.cli import main
from conftest import writable_glue_copy


def run_cli(*args) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "blo_mixup.cli", *map(str, args)], capture_output=True, text=True)


def finetune_args(glue_dir, model_dir, out, *extra):
    return [str(a) for a in ["finetune", "--task", "rte", "--data-dir", glue_dir, "--model", model_dir, "--train-size", 16,
            "--epochs", 1, "--batch-size", 8, "--max-length", 32, "--output-dir", out, *extra]]


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """main() in this process (fast); the result has the same shape as run_cli's."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip() and not line.startswith("USDT")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("blo-mixup: error:")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def test_finetune_writes_results_and_a_plain_model(glue_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    assert main(finetune_args(glue_dir, tiny_bert_dir, out)) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("task", "method", "seed", "train_size", "metrics", "main_metric", "main_score", "train_time_s", "config"):
        assert key in results
    assert results["task"] == "rte" and results["method"] == "vanilla" and results["train_size"] == 16
    assert results["main_metric"] == "accuracy" and 0 <= results["main_score"] <= 1
    assert results["config"]["max_length"] == 32 and results["config"]["lr"] is None and results["lr"] == 1e-4
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 2


def test_vanilla_fits_a_small_set(glue_dir, tiny_bert_dir, tmp_path):
    """Plain fine-tuning drives the training loss down on 16 examples (the loop, schedule and clipping work)."""
    out = tmp_path / "fit"
    assert main(finetune_args(glue_dir, tiny_bert_dir, out, "--epochs", 60, "--lr", 2e-3, "--warmup-ratio", 0.0,
                              "--no-save-model")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["final_train_loss"] < 0.05
    assert not (out / "model").exists()


def test_finished_run_is_not_overwritten(glue_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    assert main(finetune_args(glue_dir, tiny_bert_dir, out, "--no-save-model")) == 0
    before = (out / "results.json").read_text()
    result = run_cli(*finetune_args(glue_dir, tiny_bert_dir, out, "--no-save-model"))
    assert_one_line_error(result, "already holds a finished run", "--overwrite")
    assert (out / "results.json").read_text() == before
    assert main(finetune_args(glue_dir, tiny_bert_dir, out, "--no-save-model", "--overwrite", "--seed", 2)) == 0
    assert json.loads((out / "results.json").read_text())["seed"] == 2


def test_config_file_and_flag_override(glue_dir, tiny_bert_dir, tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"task": "rte", "data_dir": str(glue_dir), "model": str(tiny_bert_dir),
                                  "train_size": 16, "epochs": 1, "max_length": 24, "save_model": False}))
    out = tmp_path / "run"
    assert main(["finetune", "--config", str(config), "--output-dir", str(out), "--max-length", "16"]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["max_length"] == 16


@pytest.fixture
def broken_glue(tmp_path, glue_dir):
    """A writable copy of RTE whose train.tsv each test can break."""
    return writable_glue_copy(tmp_path / "glue", glue_dir, "RTE", 60)


def _rewrite(path: Path, fn):
    path.write_text(fn(path.read_text()))


@pytest.mark.parametrize("case, words", [
    ("unknown_task", ["unknown task", "rtee", "rte"]),
    ("missing_folder", ["does not exist", "--data-dir"]),
    ("missing_file", ["train.tsv"]),
    ("wrong_columns", ["column"]),
    ("bad_label", ["label", "maybe"]),
    ("empty_file", ["empty"]),
    ("too_many", ["train size", "--train-size"]),
    ("below_classes", ["train size", "--train-size"]),
    ("unknown_method", ["unknown method", "vanila", "vanilla"]),
    ("bad_flag_value", ["--lr"]),
    ("unknown_flag", ["--learning-rate"]),
    ("foreign_option", ["--hypergradient", "blo-mixup"]),
    ("bad_model_path", ["not a model folder"]),
    ("config_typo", ["unknown option", "epoch", "epochs"]),
])
def test_bad_input_gives_one_line_and_exit_2(case, words, broken_glue, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = finetune_args(broken_glue, tiny_bert_dir, out)
    train = broken_glue / "RTE" / "train.tsv"
    if case == "unknown_task":
        args[args.index("rte")] = "rtee"
    elif case == "missing_folder":
        args[args.index(str(broken_glue))] = str(tmp_path / "nowhere")
    elif case == "missing_file":
        train.unlink()
    elif case == "wrong_columns":
        _rewrite(train, lambda t: t.replace("sentence1", "premise", 1))
    elif case == "bad_label":
        _rewrite(train, lambda t: t.replace("not_entailment", "maybe", 1))
    elif case == "empty_file":
        train.write_text("")
    elif case == "too_many":
        args[args.index("--train-size") + 1] = "5000"
    elif case == "below_classes":
        args[args.index("--train-size") + 1] = "1"
    elif case == "unknown_method":
        args += ["--method", "vanila"]
    elif case == "bad_flag_value":
        args += ["--lr", "-1"]
    elif case == "unknown_flag":
        args += ["--learning-rate", "1e-3"]
    elif case == "foreign_option":
        args += ["--hypergradient", "cg"]
    elif case == "bad_model_path":
        empty = tmp_path / "empty-model"
        empty.mkdir()
        args[args.index(str(tiny_bert_dir))] = str(empty)
    elif case == "config_typo":
        config = tmp_path / "c.json"
        config.write_text(json.dumps({"epoch": 2}))
        args += ["--config", str(config)]
    result = run_main(capsys, *args)
    assert_one_line_error(result, *words)
    assert not (out / "results.json").exists()


def test_installed_command_exits_2_without_traceback(tmp_path):
    """The real entry point, in a subprocess, as a user runs it."""
    result = run_cli("finetune", "--task", "rtee", "--output-dir", tmp_path / "out")
    assert_one_line_error(result, "unknown task", "rte")


def test_nan_loss_stops_with_exit_2(glue_dir, tiny_bert_dir, tmp_path, capsys):
    result = run_main(capsys, *finetune_args(glue_dir, tiny_bert_dir, tmp_path / "out", "--lr", 1e30, "--epochs", 3))
    assert_one_line_error(result, "loss became", "step", "--lr")


def test_methods_lists_every_method_its_options_and_how_to_write_a_variant(capsys):
    import dataclasses

    from blo_mixup.methods import METHODS

    assert main(["methods"]) == 0
    printed = capsys.readouterr().out
    for name, cls in METHODS.items():
        assert f"{name}: {cls.summary}" in printed
        for f in dataclasses.fields(cls.options_class):
            assert f"    --{f.name.replace('_', '-')} (default {f.default}): " in printed
    assert "METHOD+OPTION=VALUE is a variant" in printed
