"""Other names of options: Hugging Face TrainingArguments names (accepted in config files and by fit(),
suggested as CLI flags), and the old names of renamed options (outer_lr -> upper_lr, inner_clip ->
lower_clip: accepted as flags, config keys, fit() keywords, in compare's variants and in recorded runs)."""

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


def test_old_names_of_renamed_options_are_accepted_everywhere(tmp_path):
    from blo_mixup.cli import build_parser, resolve_finetune
    from blo_mixup.compare import method_variants

    args = build_parser().parse_args(["finetune", "--method", "blo-mixup", "--task", "rte", "--outer-lr", "0.01",
                                      "--inner-clip", "2"])
    _, method = resolve_finetune(args)
    assert (method.options.upper_lr, method.options.lower_clip) == (0.01, 2.0)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"task": "rte", "method": "blo-mixup", "outer_lr": 0.02, "inner-clip": 3}))
    _, method = resolve_options(read_config_file(path))
    assert (method.options.upper_lr, method.options.lower_clip) == (0.02, 3.0)
    _, method = resolve_options({"task": "rte", "method": "blo-mixup", "outer_lr": 0.03}, python=True)  # fit()
    assert method.options.upper_lr == 0.03
    # a variant's label keeps the user's spelling (committed tables name their rows so); its value is the new option
    assert method_variants("blo-mixup+outer-lr=1e-2") == {"blo-mixup+outer-lr=1e-2": ("blo-mixup", {"upper_lr": "1e-2"})}


def test_old_and_new_name_of_one_option_are_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"task": "rte", "method": "blo-mixup", "outer_lr": 0.02, "upper_lr": 0.01}))
    with pytest.raises(UserError, match="both 'outer_lr' \\(its old name\\) and 'upper_lr'"):
        read_config_file(path)


def test_a_run_recorded_with_old_names_matches_the_same_options_now():
    """--resume and compare's check of a run folder compare recorded options with today's: a run recorded as
    outer_lr=0.002 is the same run as upper_lr=0.002, and a different value is still caught."""
    from blo_mixup.checkpoint import changed_options

    recorded = {"lr": 1e-4, "method_options": {"outer_lr": 0.002, "inner_clip": 5.0, "unroll_steps": 1}}
    now = {"lr": 1e-4, "method_options": {"upper_lr": 0.002, "lower_clip": 5.0, "unroll_steps": 1}}
    assert changed_options(recorded, now) == ""
    assert "method_options" in changed_options(recorded, {**now, "method_options": {**now["method_options"], "upper_lr": 0.01}})
