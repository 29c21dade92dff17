"""register_hypergradient: a user's function, registered by name, is exact on the quadratic problem of
test_hypergradients.py and runs end to end through blo_mixup.fit and a `blo-mixup finetune --config` file;
names, options and second-order loading are checked like the built-ins'."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from betty.hypergradient import jvp_fn_mapping

import blo_mixup
from blo_mixup.blo import hypergradients as hg
from blo_mixup.errors import UserError
from test_cli import assert_one_line_error, finetune_args, run_main
from test_hypergradients import MID_DATA, WELL_DATA, build, exact_solution, hypergradient, quiet_betty  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_hypergradient.py"


def load_example():
    spec = importlib.util.spec_from_file_location("custom_hypergradient", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers "scaled-identity"
    return module


@pytest.fixture(autouse=True)
def only_builtins_afterwards():
    yield
    for name in hg.hypergradient_names():
        if name not in hg.HYPERGRADIENTS:  # the test's own; nystrom and direct-only ship with the package
            hg.unregister_hypergradient(name)
    assert hg.hypergradient_names() == hg.HYPERGRADIENTS


def closed_form(data, scale):
    """-scale (d2 L_low / d lam d w) v on the ridge problem: d/dlam_j of dL/dw_j = 2 exp(lam_j) w_j, v = dF/dw."""
    X1, y1, X2, y2, lam = data
    w = exact_solution(*data)[0]
    v = 2 * X2.T @ (X2 @ w - y2) / len(X2)
    return -scale * 2 * lam.exp() * w * v


@pytest.mark.parametrize("data", [WELL_DATA, MID_DATA])
def test_a_registered_function_is_exact_on_the_quadratic_problem(data):
    load_example()
    config = hg.hypergradient_config("scaled-identity", options={"scale": 2.5})
    assert config.type == "blo_scaled_identity" and config.hypergradient_options == {"scale": 2.5}
    _, upper, lower = build(data, config)
    ours = hypergradient(upper, lower)
    expected = closed_form(data, 2.5)
    assert torch.allclose(ours, expected, rtol=1e-12, atol=1e-15)
    # the same as darts-plain's finite difference (exact on a quadratic up to rounding), scaled
    plain = hypergradient(*build(data, hg.hypergradient_config("darts-plain"))[1:])
    assert torch.allclose(ours, 2.5 * plain, rtol=1e-6)
    # with sync (Betty's usual call), the value lands in .grad and None is returned
    X1, y1, X2, y2, lam = data
    upper.zero_grad()
    vector = torch.autograd.grad(upper.training_step((X2, y2)), [lower.module.value])
    assert jvp_fn_mapping[config.type](vector, lower, upper, True) is None
    assert torch.allclose(upper.module.value.grad, expected, rtol=1e-12, atol=1e-15)


def test_one_engine_step_with_the_registered_function():
    load_example()
    engine, upper, lower = build(MID_DATA, hg.hypergradient_config("scaled-identity"))
    before = upper.module.value.detach().clone()
    engine.run()  # upper SGD lr 1: lam moves by minus the hypergradient (direct part 0: F does not read lam)
    assert torch.allclose(before - upper.module.value.detach(), closed_form(MID_DATA, 1.0), rtol=1e-12, atol=1e-15)


def test_the_record_is_what_the_cli_validation_and_config_read():
    load_example()
    record = hg.get_hypergradient("Scaled-Identity")
    assert (record.name, record.options, record.second_order, record.builtin) == ("scaled-identity", {"scale": 1.0}, True, False)
    assert hg.hypergradient_names() == (*hg.HYPERGRADIENTS, "scaled-identity")
    assert record.betty_type == "blo_scaled_identity"
    assert hg.needs_double_backward("scaled-identity")
    assert hg.hypergradient_config("blo_scaled_identity").hypergradient_options == {"scale": 1.0}
    # the built-ins are records too, their options mapped onto Betty's fields
    darts = hg.get_hypergradient("darts")
    assert darts.builtin and darts.options == {"radius": 0.01} and darts.betty_fields == {"radius": "darts_alpha"}
    assert hg.hypergradient_config("sama", options="radius=0.5").sama_adam_alpha == 0.5
    neumann = hg.hypergradient_config("neumann", options={"alpha": 0.1}, iterations=4)
    assert (neumann.neumann_iterations, neumann.neumann_alpha, neumann.hypergradient_options) == (4, 0.1, {"iterations": 4, "alpha": 0.1})
    assert hg.options_of(hg.hypergradient_config("cg")) == {"iterations": 3}
    # the flag's help names the methods the package ships
    from blo_mixup.blo.method import BloMixupOptions

    help_text = {f.name: f for f in dataclasses.fields(BloMixupOptions)}["hypergradient"].metadata["help"]
    assert f"a registered name (shipped: {', '.join(hg.HYPERGRADIENTS)}" in help_text


def test_second_order_loads_the_model_with_eager_attention():
    from blo_mixup.methods import get_method

    load_example()
    blo = get_method("blo-mixup")
    options = blo.options_class(hypergradient="scaled-identity")
    assert blo(options).model_kwargs() == {"eager_attention": True}
    blo_mixup.register_hypergradient("first-order", lambda vector, curr, prev, sync: None)
    assert blo(blo.options_class(hypergradient="first-order")).model_kwargs() == {"eager_attention": False}


def test_registering_a_name_twice_is_refused_unless_replace():
    example = load_example()
    with pytest.raises(UserError, match="'scaled-identity' is already registered; .*replace=True"):
        blo_mixup.register_hypergradient("scaled-identity", example.scaled_identity)
    with pytest.raises(UserError, match="'darts' is already registered"):
        blo_mixup.register_hypergradient("darts", example.scaled_identity)
    record = blo_mixup.register_hypergradient("scaled-identity", example.scaled_identity, options={"scale": 3.0},
                                              second_order=True, replace=True)
    assert hg.get_hypergradient("scaled-identity") is record and record.options == {"scale": 3.0}
    with pytest.raises(UserError, match="built in and cannot be unregistered"):
        hg.unregister_hypergradient("cg")


@pytest.mark.parametrize("args, kwargs, message", [
    (("Bad Name", None), {}, "use lower-case letters"),
    (("ok", "not a function"), {}, "fn must be a function"),
    (("ok", lambda vector, curr: None), {}, "four arguments"),
    (("ok", None), {"options": {"scale": -1.0}}, r"scale=-1.0 for the 'ok' hypergradient; give a number > 0"),
    (("ok", None), {"options": {"steps": [1]}}, "defaults must be int, float, bool or str"),
    (("ok", None), {"options": {"scale": 1.0}, "betty_fields": {"scale": "darts_alph"}}, "did you mean 'darts_alpha'"),
    (("ok", None), {"second_order": "yes"}, "second_order must be True or False"),
    (("darts_plain", None), {}, "would sit in Betty under 'blo_darts_plain'"),
])
def test_bad_registrations(args, kwargs, message):
    name, fn = args
    fn = (lambda vector, curr, prev, sync: None) if fn is None else fn
    with pytest.raises(UserError, match=message):
        blo_mixup.register_hypergradient(name, fn, **kwargs)
    assert hg.hypergradient_names() == hg.HYPERGRADIENTS


@pytest.mark.parametrize("name, kwargs, message", [
    ("scaled-identiy", {}, "unknown hypergradient 'scaled-identiy'.*did you mean 'scaled-identity'.*register_hypergradient"),
    ("scaled-identity", {"options": {"scal": 2.0}}, "scal=2.0 does not apply to the 'scaled-identity' hypergradient: its options are: scale \\(did you mean 'scale'\\?\\)"),
    ("scaled-identity", {"options": "scale=-2"}, "scale=-2.0 for the 'scaled-identity' hypergradient; give a number > 0"),
    ("scaled-identity", {"options": "scale=two"}, "scale='two' .*give a number > 0"),
    ("scaled-identity", {"options": "scale"}, "'scale' is not name=value"),
    ("scaled-identity", {"iterations": 3}, "iterations=3 does not apply to the 'scaled-identity' hypergradient: its options are: scale"),
    ("darts", {"radius": 0.1, "options": {"radius": 0.2}}, "option 'radius' of the 'darts' hypergradient is given twice"),
])
def test_bad_names_and_options(name, kwargs, message):
    load_example()
    with pytest.raises(UserError, match=message):
        hg.hypergradient_config(name, **kwargs)


def test_fit_by_name_end_to_end(tiny_bert_dir, tmp_path, one_thread):
    import pandas as pd

    example = load_example()
    seen = []

    def counted(vector, curr, prev, sync):
        seen.append(hg.options_of(curr)["scale"])
        return example.scaled_identity(vector, curr, prev, sync)

    blo_mixup.register_hypergradient("scaled-identity", counted, options={"scale": 1.0}, second_order=True, replace=True)
    words = ["good", "bad"]
    data = pd.DataFrame({"text": [f"a {words[i % 2]} film, number {i}" for i in range(24)],
                         "label": [words[i % 2] for i in range(24)]})
    result = blo_mixup.fit(str(tiny_bert_dir), data, hypergradient="scaled-identity", hypergradient_options={"scale": 2.0},
                           text_columns="text", epochs=1, batch_size=8, max_length=32, phase2_epochs=0,
                           output_dir=tmp_path / "run", save_model=False)
    phase1 = result.results["blo"]["phase1"]
    assert phase1["upper_steps"] >= 1 and seen == [2.0] * phase1["upper_steps"]
    assert result.results["config"]["method_options"]["hypergradient"] == "scaled-identity"
    assert result.results["config"]["method_options"]["hypergradient_options"] == {"scale": 2.0}
    assert result.attention is not None
    with pytest.raises(UserError, match="did you mean 'scaled-identity'"):
        blo_mixup.fit(str(tiny_bert_dir), data, hypergradient="scaled_identity", text_columns="text")


def test_the_example_runs(tiny_bert_dir, tmp_path, one_thread, capsys):
    example = load_example()
    result = example.main(["--model", str(tiny_bert_dir), "--output-dir", str(tmp_path / "run")])
    assert "evaluation set: accuracy" in capsys.readouterr().out
    assert result.results["config"]["method_options"]["hypergradient"] == "scaled-identity"
    assert result.model.config._attn_implementation == "eager"  # second_order: eager attention


def test_example_user_code_is_under_30_lines():
    text = EXAMPLE.read_text()
    user = text.split("# --- the user code")[1].split("# ----")[0]
    assert len([line for line in user.splitlines()[1:] if line.strip()]) < 30


MODULE = '''
import blo_mixup
from blo_mixup.blo.hypergradients import options_of

CALLS = []


def zero_implicit(vector, curr, prev, sync):
    """No implicit term: the attention follows its direct gradient only (a test double)."""
    CALLS.append(options_of(curr)["scale"])
    return [p.detach() * 0 for p in prev.trainable_parameters()]


blo_mixup.register_hypergradient("zero-implicit", zero_implicit, options={"scale": 1.0})
'''


def test_a_config_file_names_a_registered_hypergradient(glue_dir, tiny_bert_dir, tmp_path, capsys, one_thread):
    module = tmp_path / "my_hypergradients.py"
    module.write_text(MODULE)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"method": "blo-mixup", "hypergradient": "zero-implicit",
                                  "hypergradient_module": str(module), "hypergradient_options": {"scale": 2.0}}))
    args = finetune_args(glue_dir, tiny_bert_dir, tmp_path / "out", "--config", config, "--train-size", 32,
                         "--no-save-model", "--phase2-epochs", 0)
    result = run_main(capsys, *args)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["method_options"]["hypergradient"] == "zero-implicit"
    calls = __import__("sys").modules["blo_mixup_user_my_hypergradients"].CALLS
    assert calls == [2.0] * results["blo"]["phase1"]["upper_steps"] and calls
    # the flag overrides the file's options, as text
    result = run_main(capsys, *args, "--hypergradient-options", "scale=3", "--output-dir", tmp_path / "out2")
    assert result.returncode == 0, result.stderr
    assert calls[-1] == 3.0
    # a typo in the name: one line with the suggestion, nothing written
    result = run_main(capsys, *finetune_args(glue_dir, tiny_bert_dir, tmp_path / "out3", "--config", config,
                                             "--hypergradient", "zero-implicitt"))
    assert_one_line_error(result, "unknown hypergradient 'zero-implicitt'", "did you mean 'zero-implicit'")
    assert not (tmp_path / "out3" / "results.json").exists()


def test_a_missing_hypergradient_module_is_one_line(glue_dir, tiny_bert_dir, tmp_path, capsys):
    result = run_main(capsys, *finetune_args(glue_dir, tiny_bert_dir, tmp_path / "out", "--method", "blo-mixup",
                                             "--hypergradient-module", tmp_path / "nope.py"))
    assert_one_line_error(result, "nope.py': no such file")


def test_docs_describe_it():
    docs = (ROOT / "docs" / "hypergradients.md").read_text()
    assert "## Your own hypergradient" in docs and "register_hypergradient(" in docs
    extending = (ROOT / "docs" / "extending.md").read_text()
    for heading in ("## Adding a hypergradient", "## Adding a level", "## Adding a baseline method"):
        assert heading in extending
    assert "register_level(" in extending and "examples/custom_level.py" in extending
    assert f"shipped: {', '.join(hg.HYPERGRADIENTS)}" in (ROOT / "docs" / "cli.md").read_text()
