"""The core method end to end on a tiny BERT: phase 1 (BLO on Betty) + phase 2, per hypergradient."""

import copy
import dataclasses
import json

import pytest
import torch

from blo_mixup.config import RunConfig
from blo_mixup.finetune import build_context, run_finetune
from blo_mixup.methods import get_method
from blo_mixup.blo.mixup import is_mixed


def make_run(glue_dir, model_dir, out, **overrides):
    values = dict(task="rte", data_dir=str(glue_dir), model=str(model_dir), train_size=20, epochs=1, batch_size=4,
                  max_length=32, output_dir=str(out), lr=1e-3)
    values.update(overrides)
    return RunConfig(**values)


def make_method(run, **options):
    cls = get_method("blo-mixup")
    return cls(cls.options_class(**options), run)


@pytest.mark.parametrize("hypergradient", ["darts", "darts-plain", "neumann", "cg", "sama", "nystrom", "direct-only"])
def test_phase1_and_phase2_per_hypergradient(hypergradient, glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    run = make_run(glue_dir, tiny_bert_dir, tmp_path / "run")
    method = make_method(run, hypergradient=hypergradient, upper_lr=0.05)
    (tmp_path / "run").mkdir()
    model, ctx = build_context(run, method, tmp_path / "run")
    pretrained = {name: p.detach().clone() for name, p in model.named_parameters()}
    model = method.prepare_model(model, ctx)
    mixup = method.mixup
    w0_before = {name: b.detach().clone() for name, b in model.named_buffers() if name.endswith("w0")}
    a_before = copy.deepcopy(mixup.state_dict())

    import blo_mixup.blo.engine as engine

    after_phase1 = {}
    real_phase1 = engine.run_phase1

    def spy(*args, **kwargs):
        stats = real_phase1(*args, **kwargs)
        after_phase1.update(copy.deepcopy(mixup.state_dict()))
        after_phase1["w"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return stats

    monkeypatch.setattr(engine, "run_phase1", spy)
    stats = method.fit(model, ctx)

    # A moved in phase 1 ...
    assert any(not torch.equal(a_before[k], after_phase1[k]) for k in a_before), "attention did not move"
    # ... and stayed fixed in phase 2, while W kept training
    assert all(torch.equal(after_phase1[k], v) for k, v in mixup.state_dict().items())
    assert any(not torch.equal(after_phase1["w"][n], p) for n, p in model.named_parameters())
    # W0 never changes and equals the pretrained weights
    assert w0_before and all(torch.equal(w0_before[n], b) for n, b in model.named_buffers() if n.endswith("w0"))
    for name, buffer in model.named_buffers():
        if name.endswith("w0"):
            module = name.rsplit(".parametrizations", 1)[0]
            assert torch.equal(buffer, pretrained[f"{module}.weight"])
    # the constraint holds
    assert all(((p >= 0) & (p <= 1)).all() for p in mixup.parameters())
    assert stats["phase1"]["upper_steps"] >= 1 and stats["phase2"]["steps"] >= 1
    merged = method.finalize_model(model)
    assert not is_mixed(merged)


def test_nystrom_takes_its_options_from_the_command_line():
    from blo_mixup.cli import build_parser, resolve_finetune

    args = build_parser().parse_args(["finetune", "--method", "blo-mixup", "--task", "rte", "--hypergradient", "nystrom",
                                      "--hypergradient-options", "rank=10"])
    _, method = resolve_finetune(args)
    assert (method.hypergradient.name, dict(method.hypergradient.options)) == ("nystrom", {"rank": 10, "rho": 0.01, "seed": 1})
    assert method.model_kwargs() == {"eager_attention": True}  # second order


def test_cli_run_writes_attention_outputs_and_plain_model(glue_dir, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from blo_mixup.cli import main

    out = tmp_path / "run"
    code = main(["finetune", "--method", "blo-mixup", "--task", "rte", "--data-dir", str(glue_dir), "--model",
                 str(tiny_bert_dir), "--train-size", "20", "--epochs", "1", "--batch-size", "4", "--max-length", "32",
                 "--unroll-steps", "2", "--phase2-epochs", "1", "--output-dir", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "blo-mixup"
    assert results["blo"]["phase1"]["d1_size"] == 16 and results["blo"]["phase1"]["d2_size"] == 4
    assert results["blo"]["phase1"]["lower_steps"] == 4 and results["blo"]["phase1"]["upper_steps"] == 2
    assert results["blo"]["attention"], "attention statistics missing"
    assert results["config"]["method_options"]["unroll_steps"] == 2
    assert (out / "attention.png").stat().st_size > 0 and (out / "attention.pt").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert not any("w0" in name or "parametrizations" in name for name in model.state_dict())
    exported = tmp_path / "exported"
    assert main(["export", str(out), str(exported)]) == 0
    assert (exported / "config.json").is_file()


def test_fold_averaging_runs_each_fold(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    import blo_mixup.blo.engine as engine

    calls = []
    real = engine.run_phase1
    monkeypatch.setattr(engine, "run_phase1", lambda *a, **k: calls.append(k["desc"]) or real(*a, **k))
    run = make_run(glue_dir, tiny_bert_dir, tmp_path / "run", save_model=False)
    results = run_finetune(run, make_method(run, folds=2, phase2_epochs=0))
    assert len(calls) == 2 and "fold 2/2" in calls[1]
    assert "phase2" not in results["blo"]


@pytest.mark.parametrize("options, words", [
    ({"split_ratio": 1.0}, ["--split-ratio"]),
    ({"hypergradient": "darts", "hypergradient_iterations": 5}, ["iterations"]),
    ({"hypergradient": "newton"}, ["unknown hypergradient", "newton"]),
    ({"unroll_steps": 0}, ["--unroll-steps"]),
    ({"levels": 4}, ["--levels"]),
])
def test_bad_options_are_user_errors(options, words, tmp_path):
    from blo_mixup.errors import UserError

    with pytest.raises(UserError) as error:
        make_method(RunConfig(task="rte"), **options)
    for word in words:
        assert word in str(error.value)


def test_fast_preset_defaults_and_overrides(glue_dir, tiny_bert_dir, tmp_path):
    """blo-mixup-fast: blo-mixup with unroll 5, upper lr 1e-2, 1 epoch of phase 2; flags still override."""
    import json

    from blo_mixup.cli import main
    from blo_mixup.methods import get_method

    fast, paper = get_method("blo-mixup-fast").options_class(), get_method("blo-mixup").options_class()
    changed = {k for k, v in dataclasses.asdict(fast).items() if dataclasses.asdict(paper)[k] != v}
    assert changed == {"unroll_steps", "upper_lr", "phase2_epochs"}
    assert (fast.unroll_steps, fast.upper_lr, fast.phase2_epochs) == (5, 1e-2, 1.0)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "rte", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir), "--train-size", "40",
                 "--epochs", "2", "--batch-size", "8", "--max-length", "32", "--method", "blo-mixup-fast",
                 "--unroll-steps", "2", "--no-save-model", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method_options"]["unroll_steps"] == 2  # the flag wins over the preset
    assert results["training"]["phase1"]["lower_steps"] == 8 and results["training"]["phase1"]["upper_steps"] == 4
    assert results["training"]["phase2"]["steps"] == 5  # 1 epoch of 40 examples at batch 8


def test_bench_whole_run_estimate_follows_each_presets_phases():
    """The estimate's arithmetic: phase-1 lower steps / U x iteration + phase-2 steps x mixup step."""
    from blo_mixup.bench import BenchOptions, whole_run_ratios
    from blo_mixup.training import steps_for

    options = BenchOptions(train_size=300, batch_size=16, epochs=3.0, split_ratio=0.8)
    rows = [{"case": "vanilla", "step_s": 2.0, "lower_steps": 1, "phase_epochs": None},
            {"case": "mixup-step", "step_s": 2.1, "lower_steps": 1, "phase_epochs": None},
            {"case": "blo-darts-u1", "step_s": 8.0, "lower_steps": 1, "phase_epochs": None},
            {"case": "blo-mixup-fast", "step_s": 15.0, "lower_steps": 5, "phase_epochs": (None, 1.0)}]
    whole = whole_run_ratios(rows, options, steps_for)
    assert whole["vanilla_s"] == 57 * 2.0  # ceil(300 / 16) = 19 steps x 3 epochs
    assert whole["blo-darts-u1"]["seconds"] == pytest.approx(45 * 8.0 + 57 * 2.1)  # D1 = 240: 15 x 3 lower steps
    assert whole["blo-mixup-fast"]["seconds"] == pytest.approx(45 / 5 * 15.0 + 19 * 2.1)
    assert whole["blo-mixup-fast"]["ratio"] == pytest.approx(whole["blo-mixup-fast"]["seconds"] / 114.0)
