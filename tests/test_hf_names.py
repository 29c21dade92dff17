"""Hugging Face TrainingArguments names: accepted in config files and by fit(), suggested as CLI flags."""

import json

import pytest

from blo_mixup.cli import main
from blo_mixup.options import resolve_options
from blo_mixup.config import read_config_file
from blo_mixup.errors import UserError


def test_config_file_accepts_training_arguments_names(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"task": "rte", "learning_rate": 3e-4, "num_train_epochs": 5, "per_device_train_batch_size": 8,
                                "per_device_eval_batch_size": 32, "warmup_ratio": 0.06, "weight_decay": 0.0, "seed": 7,
                                "output_dir": "runs/x", "overwrite_output_dir": True}))
    run, _ = resolve_options(read_config_file(path))
    assert (run.lr, run.epochs, run.batch_size, run.eval_batch_size, run.warmup_ratio, run.weight_decay, run.seed,
            run.output_dir, run.overwrite) == (3e-4, 5, 8, 32, 0.06, 0.0, 7, "runs/x", True)


def test_both_names_of_one_option_are_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"task": "rte", "learning_rate": 3e-4, "lr": 1e-4}))
    with pytest.raises(UserError, match="both 'learning_rate'.*and 'lr'"):
        read_config_file(path)


@pytest.mark.parametrize("flag, ours", [("--learning_rate", "--lr"), ("--learning-rate", "--lr"),
                                        ("--num_train_epochs", "--epochs"), ("--per-device-train-batch-size", "--batch-size")])
def test_training_arguments_flags_are_answered_with_ours(flag, ours, capsys):
    assert main(["finetune", "--task", "rte", flag, "3"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} is the Hugging Face TrainingArguments name; here it is {ours}" in err and len(err.strip().splitlines()) == 1


def test_fit_keywords_accept_training_arguments_names():
    from blo_mixup.options import check_option_names

    check_option_names(["learning_rate", "num_train_epochs"], "fit()")  # no error
    run, _ = resolve_options({"task": "rte", "learning_rate": 2e-4, "num_train_epochs": 4}, python=True)
    assert (run.lr, run.epochs) == (2e-4, 4)
