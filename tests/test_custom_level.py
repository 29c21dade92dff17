"""A user's own level (examples/custom_level.py: learned class weights), declared once with
blo_mixup.register_level: the engine builds the graph from the declaration, the new node's
hypergradient matches finite differences of the unrolled objective, and it runs end to end through
blo_mixup.fit and a config file. Bad declarations fail with one line."""

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

import blo_mixup
from blo_mixup.blo.engine import BLOSettings, build_engine
from blo_mixup.blo.levels import LEVELS, unregister_level
from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup
from blo_mixup.errors import UserError
from test_cli import assert_one_line_error, finetune_args, run_main
from test_three_levels import TinyClassifier, quiet_betty_one_thread, relative_error  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_level.py"
ALPHA, H = 1e-3, 1e-4


def load_example():
    spec = importlib.util.spec_from_file_location("custom_level", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers "class_weights"
    return module


@pytest.fixture(autouse=True)
def only_builtin_levels_afterwards():
    yield
    for name in [n for n in LEVELS if n not in ("weights", "attention", "data")]:
        unregister_level(name)


def tiny_engine(levels="class_weights", hypergradient="darts-plain"):
    """build_engine on a float64 TinyClassifier with the example's level on top, at a point away from W0."""
    load_example()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = TinyClassifier()
        model.config = types.SimpleNamespace(num_labels=2)
        mixup = attach_weight_mixup(model, MixupConfig(init=0.6, init_std=0.1))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
        d1 = {"inputs": torch.randn(8, 3, generator=gen), "labels": torch.tensor([0, 1, 1, 1, 0, 1, 1, 0]),
              "idx": torch.arange(8)}
        d2 = {"inputs": torch.randn(8, 3, generator=gen), "labels": torch.randint(0, 2, (8,), generator=gen),
              "idx": torch.arange(8)}
        engine = build_engine(model, mixup, [d1], [d2], BLOSettings(add_levels=levels, hypergradient=hypergradient),
                              device="cpu", train_iters=1)
        with torch.no_grad():
            engine.class_weights.module.raw.copy_(torch.tensor([0.4, -0.3]))  # weights not all 1
    finally:
        torch.set_default_dtype(default_dtype)
    engine.weights.cur_batch, engine.attention.cur_batch = d1, d2
    return engine, d1, d2


def test_the_engine_builds_the_graph_from_the_declaration():
    engine, _, _ = tiny_engine()
    names = lambda problem: sorted(tuple(p.name for p in path) for path in problem.paths)
    assert [p.name for p in engine.problems] == ["weights", "attention", "class_weights"]
    assert names(engine.class_weights) == [("class_weights", "weights", "class_weights")]
    assert names(engine.attention) == [("attention", "weights", "attention")]
    assert engine.weights.shaped_by == ("class_weights",) or list(engine.weights.shaped_by) == ["class_weights"]
    assert engine.attention.config.type == "darts"  # nobody reads the attention: an upper Config
    assert engine.weights.config.type == "blo_darts_plain"  # the run's hypergradient, on the level read


def test_the_new_levels_hypergradient_matches_finite_differences():
    """estimate: the class_weights node's gradient as its Engine step computes it (its backward over
    the path [class_weights, weights, class_weights], darts-plain with radius 0.01).
    truth: d/dr L_D2(W'(r)) / alpha, W'(r) = W - alpha dL_D1(W; r)/dW (one SGD step re-run for each
    perturbed r, central differences, h = 1e-4): the unit-step form DARTS estimates; they agree to
    O(alpha, h^2, radius^2). Measured: relative error 2.3e-4."""
    engine, d1, d2 = tiny_engine()
    top, lower = engine.class_weights, engine.weights
    top.zero_grad()
    top.backward(top.training_step(d2), top.trainable_parameters(), top.paths)
    estimate = top.module.raw.grad.detach().clone()

    params, raw = lower.trainable_parameters(), top.module.raw
    start = [p.detach().clone() for p in params]

    def upper_loss_after_one_step():
        grads = torch.autograd.grad(lower.training_step(d1), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(ALPHA * g)
            loss = top.training_step(d2).item()
            for p, s in zip(params, start):
                p.copy_(s)
        return loss

    truth = torch.zeros_like(raw)
    for i in range(len(raw)):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                raw[i] += sign * H
            values.append(upper_loss_after_one_step())
            with torch.no_grad():
                raw[i] -= sign * H
        truth[i] = (values[0] - values[1]) / (2 * H) / ALPHA
    assert truth.abs().min() > 1e-3  # both classes matter here
    assert relative_error(estimate, truth) < 1e-2
    assert torch.equal(estimate.sign(), truth.sign())


def test_fit_and_a_config_file_use_the_level_by_name(tiny_bert_dir, glue_dir, tmp_path, capsys):
    example = load_example()
    result = example.main(["--model", str(tiny_bert_dir), "--epochs", "1", "--output-dir", str(tmp_path / "fit")])
    weights = result.results["blo"]["phase1"]["class_weights"]
    assert len(weights) == 2 and weights != [1.0, 1.0]  # learned, reported in results.json
    unregister_level("class_weights")  # the config file imports the example again

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"level_module": str(EXAMPLE), "add_levels": "class_weights",
                                  "level_options": {"lr": 0.05}}))
    out = tmp_path / "cli"
    result = run_main(capsys, *finetune_args(glue_dir, tiny_bert_dir, out, "--method", "blo-mixup", "--config", str(config)))
    assert result.returncode == 0, result.stderr
    assert len(json.loads((out / "results.json").read_text())["blo"]["phase1"]["class_weights"]) == 2


def test_bad_declarations_and_names_fail_with_one_line(glue_dir, tiny_bert_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="touches no other level"):
        blo_mixup.register_level("lonely", lambda ctx, config: None)
    with pytest.raises(UserError, match="lower-case"):
        blo_mixup.register_level("Bad-Name", lambda ctx, config: None, above=("weights",))
    blo_mixup.register_level("needs_other", lambda ctx, config: None, above=("weights",), reads=("elsewhere",))
    with pytest.raises(UserError, match="needs level 'elsewhere'"):
        build_engine(TinyClassifier(), None, [], [], BLOSettings(add_levels="needs_other"), device="cpu", train_iters=1)
    result = run_main(capsys, *finetune_args(glue_dir, tiny_bert_dir, tmp_path / "x", "--method", "blo-mixup",
                                             "--add-levels", "clas_weights"))
    assert_one_line_error(result, "level 'clas_weights'")
