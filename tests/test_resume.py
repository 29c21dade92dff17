"""Faults: a run killed at any point continues with --resume to the very same weights and numbers;
NaN/Inf losses stop with the step and the last good checkpoint, or are skipped when asked."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import blo_mixup.blo.engine as engine_module
import blo_mixup.training as training_module
from blo_mixup.cli import main
from test_cli import assert_one_line_error, finetune_args, run_main

# Steps of the tiny runs below: 32 examples, batch 8, 2 epochs = 8 shared-loop steps; blo-mixup:
# phase 1 = 2 epochs over D1 (26 examples: 4 steps each), then phase 2 = 8 steps; FTFT: 8 steps of the
# reference model, then at most 8 of the main model; PAC-tuning: 12 steps, stage 2 from step 7 (full
# batch: 8 steps of 4 chunks, stage 2 from step 5).
PAC = ["--method", "pac-tuning", "--pac-stage1-fraction", "0.5", "--pac-k-models", "2", "--pac-k-examples", "8"]
# Every method; blo-mixup-fast and blo-mixup-paper are blo-mixup at other defaults, whose paths (unrolling,
# folds, another hypergradient) are the blo-mixup cases below.
CASES = {
    "vanilla": [],
    "mixout": ["--method", "mixout"],
    "child-tuning-d": ["--method", "child-tuning-d"],
    "dps-dense": ["--method", "dps-dense", "--dps-update-ratio", "0.25"],
    "dps-mix": ["--method", "dps-mix", "--dps-update-ratio", "0.25"],
    "r3f": ["--method", "r3f"],
    "r-drop": ["--method", "r-drop"],
    "child-tuning-f": ["--method", "child-tuning-f"],
    "reinit-llrd": ["--method", "reinit-llrd"],
    "guided-dropout": ["--method", "guided-dropout"],  # later runs read its Fisher scores from the cache
    "vanilla-matched": ["--method", "vanilla-matched"],
    "fixed-attention": ["--method", "fixed-attention", "--attention", "0.7"],
    "interpolate": ["--method", "interpolate", "--interpolate-alphas", "0.5,0.8,1"],
    "ftft": ["--method", "ftft"],
    "blo-mixup": ["--method", "blo-mixup"],
    "blo-mixup-unroll2-neumann": ["--method", "blo-mixup", "--unroll-steps", "2", "--hypergradient", "neumann"],
    "blo-mixup-3-levels": ["--method", "blo-mixup", "--levels", "3"],
    "blo-mixup-2-folds": ["--method", "blo-mixup", "--folds", "2", "--phase2-epochs", "1"],
    "pac-tuning": [*PAC, "--pac-epochs", "3"],
    "pac-tuning-full-batch": [*PAC, "--pac-epochs", "8", "--pac-full-batch"],
}
# The training steps (counted over the whole run) at whose start a run is killed: between saves, in the
# first stage, then in the next stage or, for PAC-tuning, in stage 2 (after a save in stage 2).
CRASHES = {"blo-mixup": (5, 11), "interpolate": (5, 11), "pac-tuning": (5, 11), "pac-tuning-full-batch": (5, 8)}


def args_for(glue_dir, model_dir, out, extra):
    args = finetune_args(glue_dir, model_dir, out, "--train-size", 32, "--epochs", 2, "--save-steps", 3, *extra)
    return args


def comparable(run_dir: Path) -> tuple[dict, dict]:
    """results.json without timings, paths or cache bookkeeping, and the saved model's tensors."""
    results = json.loads((run_dir / "results.json").read_text())

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith(("time_s", "estimation_s"))
                    and k not in ("output_dir", "environment", "resume", "seconds", "cache", "cache_hit")}
        return value

    return strip(results), load_file(run_dir / "model" / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    results_a, weights_a = comparable(a)
    results_b, weights_b = comparable(b)
    assert results_a == results_b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


def killed():
    raise SystemExit("killed")


def crash_at(monkeypatch, n: int, action=killed) -> None:
    """Call `action` (default: raise, like a kill) at the start of the n-th training step, in the shared
    loop or in Betty's loop alike."""
    calls = {"n": 0}
    shared_step, betty_step = training_module.training_step, engine_module.ProgressEngine.train_step

    def count():
        calls["n"] += 1
        if calls["n"] == n:
            action()

    def step(*args, **kwargs):
        count()
        return shared_step(*args, **kwargs)

    def engine_step(self):
        count()
        return betty_step(self)

    monkeypatch.setattr(training_module, "training_step", step)
    monkeypatch.setattr(engine_module.ProgressEngine, "train_step", engine_step)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "pac-tuning-full-batch" else c
                                  for c in CASES])  # full batch: 4 chunks a step, about 50 s
def test_resume_after_a_crash_gives_the_same_run(case, glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    extra = CASES[case] + (["--gd-cache-dir", str(tmp_path / "gd-cache")] if case == "guided-dropout" else [])
    assert main(args_for(glue_dir, tiny_bert_dir, tmp_path / "whole", extra)) == 0
    assert not (tmp_path / "whole" / "checkpoints").exists()  # removed once the run is complete
    # A crash between saves: in the first stage, then (blo-mixup) in phase 2 or the second fold.
    for n in CRASHES.get(case, CRASHES["blo-mixup"] if case.startswith("blo-mixup") else (5,)):
        out = tmp_path / f"crashed-{n}"
        with monkeypatch.context() as patch:
            crash_at(patch, n)
            with pytest.raises(SystemExit):
                main(args_for(glue_dir, tiny_bert_dir, out, extra))
        assert list((out / "checkpoints").glob("stage*.pt")) and not (out / "results.json").exists()
        assert main(args_for(glue_dir, tiny_bert_dir, out, extra) + ["--resume"]) == 0
        assert_same_run(tmp_path / "whole", out)


def test_ftft_killed_after_a_best_evaluation_resumes_to_the_same_run(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    """FTFT's main model, evaluated every step: the best score at step 2, saved with the early stopping's
    state at step 3, killed at step 5; the resumed run stops early at step 6 (patience 4) and ends with
    the step-2 weights that only the checkpoint had kept."""
    from blo_mixup.methods import ftft

    extra = ["--method", "ftft", "--ftft-eval-every", "1", "--ftft-patience", "4"]
    at = {}
    evaluate = ftft.Ftft.evaluate_and_stop

    def evaluate_at(self, model, step, ctx):
        at["step"] = step
        return evaluate(self, model, step, ctx)

    # held-out scores by step, so that the best and the stop fall where this test needs them
    monkeypatch.setattr(ftft.Ftft, "evaluate_and_stop", evaluate_at)
    monkeypatch.setattr(ftft, "holdout_score", lambda model, ctx, data: 0.9 if at["step"] == 2 else 0.5)
    assert main(args_for(glue_dir, tiny_bert_dir, tmp_path / "whole", extra)) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())["ftft"]["main"]
    assert (whole["best_step"], whole["steps"], whole["stopped_early"]) == (2, 6, True)
    out = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        crash_at(patch, 8 + 5)  # after the reference model's 8 steps: main step 5
        with pytest.raises(SystemExit):
            main(args_for(glue_dir, tiny_bert_dir, out, extra))
    saved = torch.load(out / "checkpoints" / "stage1.pt", weights_only=False)
    assert saved["step"] == 3 and saved["method"]["best_step"] == 2 and saved["method"]["best_state"] is not None
    assert main(args_for(glue_dir, tiny_bert_dir, out, extra) + ["--resume"]) == 0
    assert_same_run(tmp_path / "whole", out)


def test_kill_9_then_resume(glue_dir, tiny_bert_dir, tmp_path):
    """A real SIGKILL of the command in a subprocess, once a checkpoint is on disk, then --resume."""
    extra = ["--method", "blo-mixup", "--save-steps", 1]
    assert main(args_for(glue_dir, tiny_bert_dir, tmp_path / "whole", extra)) == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "blo_mixup.cli", *args_for(glue_dir, tiny_bert_dir, out, extra)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "stage1.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # stage1 = phase 2: phase 1 finished, phase 2 under way
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    assert main(args_for(glue_dir, tiny_bert_dir, out, extra) + ["--resume"]) == 0
    assert_same_run(tmp_path / "whole", out)


@pytest.mark.parametrize("case, n, where", [("vanilla", 5, "at step 5 of 'train'"),
                                             ("blo-mixup", 3, "at step 3 of 'phase 1 (BLO)'"),
                                             ("blo-mixup", 8, "at the end of 'phase 1 (BLO)'")])
def test_sigterm_saves_after_the_step_and_resume_gives_the_same_run(case, n, where, glue_dir, tiny_bert_dir,
                                                                      tmp_path, monkeypatch, capsys):
    """A preempted run (SIGTERM) ends its step, saves and exits 143; --resume then loses nothing."""
    extra = [*CASES[case], "--save-steps", 1000]  # no periodic saves: the signal makes the one here
    assert main(args_for(glue_dir, tiny_bert_dir, tmp_path / "whole", extra)) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        crash_at(patch, n, lambda: os.kill(os.getpid(), signal.SIGTERM))
        result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, extra))
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert f"stopped by SIGTERM {where}" in result.stderr and "--resume" in result.stderr
    saved = torch.load(out / "checkpoints" / "stage0.pt", weights_only=False)
    assert saved.get("step", "end") == (n if n < 8 else "end")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back
    assert main(args_for(glue_dir, tiny_bert_dir, out, extra) + ["--resume"]) == 0
    assert_same_run(tmp_path / "whole", out)


def test_second_ctrl_c_stops_at_once(glue_dir, tiny_bert_dir, tmp_path, monkeypatch, capsys):
    def ctrl_c_twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        crash_at(patch, 3, ctrl_c_twice)
        result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, tmp_path / "out", []))
    assert result.returncode == 130 and "interrupted" in result.stderr
    assert not (tmp_path / "out" / "checkpoints" / "stage0.pt").exists()  # --save-steps 3: the step-3 save was not reached


def test_resume_refuses_other_options(glue_dir, tiny_bert_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        crash_at(patch, 5)
        with pytest.raises(SystemExit):
            main(args_for(glue_dir, tiny_bert_dir, out, []))
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, ["--lr", "3e-4", "--resume"]))
    assert_one_line_error(result, "--resume", "lr", "--overwrite")
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, []))
    assert_one_line_error(result, "checkpoints", "--resume", "--overwrite")
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, ["--resume", "--overwrite"]))
    assert_one_line_error(result, "--resume", "--overwrite")
    assert (out / "checkpoints").is_dir()  # nothing written is lost by a refused command
    assert main(args_for(glue_dir, tiny_bert_dir, out, ["--overwrite"])) == 0


def test_nan_names_the_step_and_the_last_checkpoint(glue_dir, tiny_bert_dir, tmp_path, monkeypatch, capsys):
    """A NaN loss at step 5 (after the save at step 3) stops the run; --skip-nonfinite skips it."""
    original = training_module.model_loss
    calls, poisoned = {"n": 0}, {}

    def loss_nan_at_step_5(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            poisoned["ids"] = batch["idx"].tolist()  # the 5th batch is NaN, in this run and the resumed one
        loss = original(model, batch)
        return loss * float("nan") if batch["idx"].tolist() == poisoned.get("ids") else loss

    monkeypatch.setattr(training_module, "model_loss", loss_nan_at_step_5)
    out = tmp_path / "out"
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, []))
    assert_one_line_error(result, "loss became nan at step 5", "stage0.pt", "step 3", "--lr", "--skip-nonfinite")
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, ["--resume", "--skip-nonfinite", 1]))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["skipped_steps"] == 1


@pytest.mark.parametrize("case", ["ftft", "pac-tuning"])
def test_nan_stops_or_is_skipped_in_ftft_and_pac_tuning(case, glue_dir, tiny_bert_dir, tmp_path, monkeypatch, capsys):
    """The same in FTFT's main model and in PAC-tuning's stage 1: a NaN loss at step 5 stops the run with
    the last good checkpoint; --resume --skip-nonfinite 1 skips that step."""
    from blo_mixup.methods import pac_tuning

    owner, name = (training_module, "model_loss") if case == "ftft" else (pac_tuning.PacTrainer, "perturbed_loss")
    original = getattr(owner, name)
    calls, poisoned = {"n": 0}, {}

    def loss_nan_at_step_5(*args):
        batch = args[1]  # model_loss(model, batch), perturbed_loss(trainer, batch, eps)
        calls["n"] += 1
        if calls["n"] == 5:
            poisoned["ids"] = batch["idx"].tolist()
        loss = original(*args)
        return loss * float("nan") if batch["idx"].tolist() == poisoned.get("ids") else loss

    monkeypatch.setattr(owner, name, loss_nan_at_step_5)
    out = tmp_path / "out"
    extra = [*CASES[case], "--ftft-patience", "8"] if case == "ftft" else CASES[case]  # FTFT: no early stop before step 5
    stage = "stage1.pt" if case == "ftft" else "stage0.pt"  # FTFT: stage0 is the reference model
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, extra))
    assert_one_line_error(result, "loss became nan at step 5", stage, "step 3", "--skip-nonfinite")
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, out, [*extra, "--resume", "--skip-nonfinite", 1]))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["skipped_steps"] == 1


def test_nan_in_phase_1_stops_with_the_step(glue_dir, tiny_bert_dir, tmp_path, capsys):
    result = run_main(capsys, *args_for(glue_dir, tiny_bert_dir, tmp_path / "out", ["--method", "blo-mixup", "--lr", "1e30"]))
    assert_one_line_error(result, "phase 1", "at step", "last good checkpoint", "--lr")


def test_resume_accepts_an_option_added_since_at_its_default(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    """A checkpoint written before an option existed (its run.json lacks the key) still resumes."""
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        crash_at(patch, 5)
        with pytest.raises(SystemExit):
            main(args_for(glue_dir, tiny_bert_dir, out, []))
    run_file = out / "checkpoints" / "run.json"
    saved = json.loads(run_file.read_text())
    del saved["strategy"]
    run_file.write_text(json.dumps(saved))
    assert main(args_for(glue_dir, tiny_bert_dir, out, ["--resume"])) == 0
