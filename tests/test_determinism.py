"""The same command with the same seed gives identical results on CPU, for every method."""

import pytest

from blo_mixup.config import RunConfig
from blo_mixup.finetune import run_finetune
from blo_mixup.methods import METHODS, get_method

QUICK_OPTIONS = {"pac-tuning": {"pac_epochs": 1.0}, "blo-mixup-fast": {"unroll_steps": 2}}  # tiny runs: 2 lower steps


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_same_seed_same_metrics(name, glue_dir, tiny_bert_dir, tmp_path):
    cls = get_method(name)
    options = dict(QUICK_OPTIONS.get(name, {}))
    if name == "guided-dropout":
        options["gd_cache_dir"] = str(tmp_path / "gd-cache")
    results = []
    for attempt in range(2):
        run = RunConfig(task="rte", data_dir=str(glue_dir), model=str(tiny_bert_dir), method=name, train_size=16,
                        epochs=1, batch_size=8, max_length=32, seed=3, output_dir=str(tmp_path / f"run{attempt}"),
                        save_model=False)
        results.append(run_finetune(run, cls(cls.options_class(**options), run)))
    first, second = (without_times(r) for r in results)
    assert first["metrics"] == second["metrics"]
    assert first == second  # training losses, attention statistics, ... all equal


def without_times(value):
    """The results without wall times, paths and cache bookkeeping, which differ between two runs."""
    if isinstance(value, dict):
        varying = ("output_dir", "config", "seconds", "cache", "cache_hit")
        return {k: without_times(v) for k, v in value.items()
                if "time" not in k and not k.endswith("_s") and k not in varying}
    return value
