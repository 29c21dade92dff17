"""Weight-update budgets: every run reports its optimizer steps on W, blo-mixup's planned count is the one it
takes, and vanilla-matched takes exactly as many; the summary shows them, and one seed shows no spread."""

import json

import pytest

from blo_mixup.cli import main
from blo_mixup.config import RunConfig
from blo_mixup.methods import get_method


def test_planned_updates_follow_the_options():
    run = RunConfig(task="rte", train_size=300, epochs=3, batch_size=16)
    assert get_method("vanilla")(run=run).planned_weight_updates(300, run) == 57  # 19 x 3
    # blo-mixup: D1 = 240 examples -> 15 x 3 lower steps, then phase 2: 19 x 3
    assert get_method("blo-mixup")(run=run).planned_weight_updates(300, run) == 45 + 57
    fast = get_method("blo-mixup-fast")(run=run)  # phase 2 for 1 epoch
    assert fast.planned_weight_updates(300, run) == 45 + 19
    from blo_mixup.blo.method import BloMixupOptions

    no_phase2 = get_method("blo-mixup")(BloMixupOptions(phase2_epochs=0, phase1_epochs=2), run)
    assert no_phase2.planned_weight_updates(300, run) == 30


def test_the_default_training_length_follows_the_data_size():
    from blo_mixup.config import default_epochs

    assert [default_epochs(n, 16) for n in (16, 300, 624, 625, 1000, 1904, 1905, 67349)] == [10, 10, 10, 9, 6, 4, 3, 3]
    assert default_epochs(1000, 32) == 10 and default_epochs(300, 1) == 3
    run = RunConfig(task="rte", train_size=300)  # no --epochs: 10 at this size, for every method's budget
    assert get_method("vanilla")(run=run).planned_weight_updates(300, run) == 190
    assert get_method("blo-mixup")(run=run).planned_weight_updates(300, run) == 150 + 190


def test_a_run_without_epochs_trains_the_default_and_records_it(glue_dir, tiny_bert_dir, tmp_path, one_thread):
    out = tmp_path / "cmp"
    args = ["compare", "--tasks", "rte", "--methods", "vanilla,vanilla-matched", "--seeds", "1", "--train-size", "16",
            "--batch-size", "8", "--max-length", "32", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir),
            "--output-dir", str(out), "--no-save-model", "--report-to", "none"]
    assert main(args) == 0
    results = {m: json.loads((out / "runs" / "rte" / m / "seed1" / "results.json").read_text())
               for m in ("vanilla", "vanilla-matched")}
    assert results["vanilla"]["epochs"] == 10 and results["vanilla"]["config"]["epochs"] is None
    assert results["vanilla"]["weight_updates"] == 2 * 10  # 16 / 8 per epoch
    # blo-mixup at the same default: D1 = 13 examples -> 2 x 10 lower steps, then 2 x 10 in phase 2
    assert results["vanilla-matched"]["weight_updates"] == 40
    assert main(args) == 0  # the folder's runs are this plan's: nothing is refused or redone


@pytest.mark.slow
def test_vanilla_matched_takes_blo_mixups_updates(glue_dir, tiny_bert_dir, tmp_path, one_thread):
    out = tmp_path / "cmp"
    args = ["compare", "--tasks", "rte", "--methods", "vanilla,blo-mixup,vanilla-matched", "--seeds", "1",
            "--train-size", "40", "--epochs", "1", "--batch-size", "8", "--max-length", "32",
            "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir), "--output-dir", str(out), "--no-save-model"]
    assert main(args) == 0
    results = {m: json.loads((out / "runs" / "rte" / m / "seed1" / "results.json").read_text())
               for m in ("vanilla", "blo-mixup", "vanilla-matched")}
    assert results["vanilla"]["weight_updates"] == 5  # 40 / 8
    # D1 = 32 examples -> 4 lower steps, phase 2 -> 5 steps
    assert results["blo-mixup"]["weight_updates"] == 4 + 5
    assert results["blo-mixup"]["blo"]["phase1"]["lower_steps"] == 4
    assert results["vanilla-matched"]["weight_updates"] == 9
    assert results["vanilla-matched"]["training"]["matched_method"] == "blo-mixup"
    summary = (out / "summary.md").read_text()
    assert "| vanilla-matched | 9 |" in summary and "| vanilla | 5 |" in summary
    assert "ONE seed" in summary and " ± " not in summary.split("\n\n")[0]  # one seed: no spread printed
    assert "against vanilla" not in summary  # no paired table from one seed
    assert "weight_updates" in (out / "results.csv").read_text().splitlines()[0]


def test_vanilla_matched_refuses_to_match_itself(tmp_path, capsys):
    assert main(["finetune", "--task", "rte", "--method", "vanilla-matched", "--match-method", "vanilla-matched",
                 "--output-dir", str(tmp_path / "x")]) == 2
    assert "matches itself" in capsys.readouterr().err


def test_paired_table_gives_a_t_interval():
    from blo_mixup.report import mean_interval, paired_table

    low, high = mean_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), rel=1e-6)
    results = [{"task": "rte", "method": m, "seed": s, "main_score": v}
               for m, values in (("a", [0.50, 0.52, 0.54]), ("b", [0.51, 0.54, 0.57])) for s, v in zip((1, 2, 3), values)]
    table = paired_table(results, ["rte"], ["a", "b"])
    assert "+2.00 ± 1.00 (3/3 higher; 95% CI -0.48 to +4.48)" in table
