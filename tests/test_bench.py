"""`blo-mixup bench` asks each method for its cases (Method.bench_cases) instead of knowing method names.
The cases are recorded, not built: no model is loaded here (test_minilm.py times real ones)."""

import pytest

from blo_mixup import bench
from blo_mixup.bench import BenchOptions, CaseBuilder
from blo_mixup.methods import METHODS, Method, get_method


@pytest.fixture
def builder(monkeypatch):
    """A CaseBuilder whose cases are (name, what was asked) records instead of timed steps."""
    def record(kind):
        def build(*args, **kwargs):  # blo cases come with name=, shared-loop ones name first
            name = kwargs.get("name") or (args[0] if kind == "shared" else "mixup-step")
            asked = (args[0].name, args[0].unroll_steps) if kind == "blo" else None  # its HypergradientSettings
            return bench.Case(name, None, None, note=(kind, asked, kwargs.get("upper_lr"), kwargs.get("phase_epochs")))
        return build

    monkeypatch.setattr(bench, "shared_loop_case", record("shared"))
    monkeypatch.setattr(bench, "_mixup_step_case", record("mixup"))
    monkeypatch.setattr(bench, "blo_case", record("blo"))
    return CaseBuilder(BenchOptions(hypergradients="darts,neumann", unroll_steps="1,5"), None, None, None)


def cases_of(builder, *names):
    builder.shared_loop("vanilla", get_method("vanilla")())
    timed = {name: [c.name for c in get_method(name)().bench_cases(builder)] for name in names}
    return [c.name for c in builder.cases], timed


def test_the_shared_loop_methods_get_one_step_and_the_others_none(builder):
    names = sorted(n for n, cls in METHODS.items() if not issubclass(cls, get_method("blo-mixup")))
    order, timed = cases_of(builder, *names)
    for name in names:
        shared_loop = METHODS[name].fit is Method.fit
        assert timed[name] == ([name] if shared_loop else []), name
    assert order[0] == "vanilla" and order.count("vanilla") == 1  # asked twice, built once
    assert timed["r-drop"] == ["r-drop"] and timed["ftft"] == [] and timed["vanilla-matched"] == []


def test_the_core_method_gets_its_bench_grid_and_a_preset_its_own_options(builder):
    order, timed = cases_of(builder, "blo-mixup", "blo-mixup-fast", "r-drop")
    assert order == ["vanilla", "mixup-step", "blo-darts-u1", "blo-darts-u5", "blo-neumann-u1", "blo-neumann-u5",
                     "blo-mixup-fast", "r-drop"]
    assert timed["blo-mixup-fast"] == ["mixup-step", "blo-mixup-fast"]  # the phase-2 step is shared, built once
    fast = next(c for c in builder.cases if c.name == "blo-mixup-fast")
    assert fast.note == ("blo", ("darts", 5), 1e-2, (None, 1.0))
    assert next(c for c in builder.cases if c.name == "blo-darts-u5").note == ("blo", ("darts", 5), 2e-3, None)


def test_bench_knows_no_method_names():
    import inspect

    source = inspect.getsource(bench.build_cases) + inspect.getsource(bench.CaseBuilder)
    for name in METHODS:
        if name != "vanilla":  # the baseline every case is compared with
            assert f'"{name}"' not in source, name
