"""`blo-mixup compare` with every method on a tiny model: runs, resumes, and writes the three files."""

import csv
import json

import pytest

from blo_mixup.cli import main
from blo_mixup.methods import METHODS


def every_method_args(task, seeds, glue_dir, model_dir, tmp_path) -> list[str]:
    """compare with every method on a tiny model, into tmp_path/cmp; quick settings for the slow methods."""
    return ["compare", "--tasks", task, "--methods", ",".join(sorted(METHODS)), "--seeds", seeds, "--train-size", "32",
            "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--data-dir", str(glue_dir),
            "--model", str(model_dir), "--output-dir", str(tmp_path / "cmp"), "--no-save-model",
            "--pac-epochs", "1", "--unroll-steps", "2", "--gd-cache-dir", str(tmp_path / "gd-cache")]


@pytest.mark.slow
def test_compare_all_methods_two_seeds(glue_dir, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    methods = sorted(METHODS)
    args = every_method_args("rte", "1,2", glue_dir, tiny_bert_dir, tmp_path)
    assert main(args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((m, s) for m in methods for s in ("1", "2"))
    summary = (out / "summary.md").read_text()
    assert all(f"| {m} |" in summary for m in methods) and "average" in summary
    assert "(the evaluation set's majority class; its mean score for regression) scores: rte 61.25." in summary  # 49 of 80
    assert (out / "summary.png").stat().st_size > 0

    # Resuming: a finished run is not redone; a killed run (a folder without results.json, no row in
    # results.csv) restarts.
    killed = out / "runs" / "rte" / "vanilla" / "seed2"
    (killed / "results.json").unlink()
    table = (out / "results.csv").read_text().splitlines()
    (out / "results.csv").write_text("\n".join(line for line in table if not line.startswith("rte,vanilla,2,")) + "\n")
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier") == 2 * len(methods) - 1
    assert "rte vanilla seed 2: running" in printed
    assert json.loads((killed / "results.json").read_text())["seed"] == 2


@pytest.mark.slow
def test_every_method_trains_a_regression_task(glue_dir, tiny_bert_dir, tmp_path):
    """STS-B: one output, MSE loss, Spearman as the main metric. The tiny model was saved with a 2-label
    head, so this also loads a checkpoint whose head does not fit the task (it gets a new one)."""
    out = tmp_path / "cmp"
    methods = sorted(METHODS)
    assert main(every_method_args("stsb", "1", glue_dir, tiny_bert_dir, tmp_path)) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["method"] for r in rows) == methods
    for row in rows:
        assert row["main_metric"] == "spearmanr"
        assert -1.0 <= float(row["main_score"]) <= 1.0, row
    assert "stsb (spearmanr)" in (out / "summary.md").read_text()


def test_compare_rejects_bad_lists(tmp_path, capsys):
    assert main(["compare", "--tasks", "rte", "--methods", "vanilla", "--seeds", "1,x", "--output-dir", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["compare", "--tasks", "rte", "--methods", "vanilla", "--seeds", "5-1", "--output-dir", str(tmp_path)]) == 2
    assert "names no seed" in capsys.readouterr().err
    assert main(["compare", "--tasks", "rte", "--methods", "vanila", "--output-dir", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_report_only_summarises_what_is_finished(glue_dir, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--tasks", "rte", "--methods", "vanilla", "--train-size", "16", "--epochs", "1",
            "--batch-size", "8", "--max-length", "32", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir),
            "--output-dir", str(out), "--no-save-model"]
    assert main([*args, "--seeds", "1-2", "--report-only"]) == 2  # nothing finished yet
    assert "no finished run" in capsys.readouterr().err
    assert main([*args, "--seeds", "1"]) == 0
    assert main([*args, "--seeds", "1-3", "--report-only"]) == 0
    assert "rte vanilla seed 2: not run yet" in capsys.readouterr().out
    assert not (out / "runs" / "rte" / "vanilla" / "seed2").exists()
    assert "(1 of 3 seeds)" in (out / "summary.md").read_text()
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 1


def test_a_table_without_its_run_folders_reports_and_resumes_from_results_csv(glue_dir, tiny_bert_dir, tmp_path, capsys):
    """A committed table keeps results.csv, not its run folders: --report-only rebuilds the same summary from
    it without the data, a run whose row is there is not redone, and rows of other plans are kept."""
    out = tmp_path / "cmp"
    args = ["compare", "--tasks", "rte", "--methods", "vanilla", "--train-size", "16", "--epochs", "1", "--batch-size", "8",
            "--max-length", "32", "--model", str(tiny_bert_dir), "--output-dir", str(out), "--no-save-model"]
    assert main([*args, "--seeds", "1-2", "--data-dir", str(glue_dir)]) == 0
    summary, rows = (out / "summary.md").read_text(), (out / "results.csv").read_text()
    assert "constant_score" in rows.splitlines()[0] and "scores: rte 61.25." in summary
    assert json.loads((out / "runs/rte/vanilla/seed1/results.json").read_text())["constant_score"] == 49 / 80
    import shutil

    shutil.rmtree(out / "runs")
    (out / "summary.md").unlink()
    assert main([*args, "--seeds", "1-2", "--data-dir", str(tmp_path / "no-data-here"), "--report-only"]) == 0
    assert (out / "summary.md").read_text() == summary and (out / "results.csv").read_text() == rows

    capsys.readouterr()
    assert main([*args, "--seeds", "1-3", "--data-dir", str(glue_dir)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier") == 2 and "rte vanilla seed 3: running" in printed
    assert not (out / "runs/rte/vanilla/seed1").exists()
    assert main([*args, "--methods", "vanilla-matched", "--seeds", "1", "--data-dir", str(glue_dir)]) == 0
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["seed"]) for r in table] == [("vanilla-matched", "1"), ("vanilla", "1"), ("vanilla", "2"), ("vanilla", "3")]
    assert "| vanilla |" not in (out / "summary.md").read_text()  # the summary is the plan's


def test_summary_table_mean_std_and_best(tmp_path):
    from blo_mixup.report import summary_table

    results = [{"task": t, "method": m, "seed": s, "main_metric": "accuracy", "main_score": v}
               for t, m, s, v in [("rte", "a", 1, 0.5), ("rte", "a", 2, 0.7), ("rte", "b", 1, 0.55), ("rte", "b", 2, 0.55),
                                  ("mrpc", "a", 1, 0.8), ("mrpc", "a", 2, 0.8), ("mrpc", "b", 1, 0.9), ("mrpc", "b", 2, 0.72)]]
    table = summary_table(results, ["rte", "mrpc"], ["a", "b"])
    assert "| a | **60.00 ± 14.14** | 80.00 ± 0.00 | **70.00 ± 7.07** |" in table
    assert "| b | 55.00 ± 0.00 | **81.00 ± 12.73** | 68.00 ± 6.36 |" in table
    with_reference = summary_table(results, ["rte", "mrpc"], ["a", "b"], reference={"rte": 0.527, "mrpc": 0.8122})
    assert with_reference.startswith(table.rstrip("\n")) and with_reference.endswith("scores: rte 52.70, mrpc 81.22.\n")


def test_paired_table_differences_on_the_same_seeds():
    from blo_mixup.report import paired_table

    results = [{"task": t, "method": m, "seed": s, "main_metric": "accuracy", "main_score": v}
               for t, m, s, v in [("rte", "a", 1, 0.5), ("rte", "a", 2, 0.7), ("rte", "b", 1, 0.55), ("rte", "b", 2, 0.55),
                                  ("mrpc", "a", 1, 0.8), ("mrpc", "a", 2, 0.8), ("mrpc", "b", 1, 0.9), ("mrpc", "b", 2, 0.72),
                                  ("mrpc", "c", 3, 0.9), ("rte", "d", 2, 0.6)]]  # c: no seed shared with a; d: one
    table = paired_table(results, ["rte", "mrpc"], ["a", "b", "c", "d"])
    # rte: +5, -15; mrpc: +10, -8; average per seed: +7.5, -11.5
    assert ("| b | -5.00 ± 14.14 (1/2 higher; 95% CI -132.06 to +122.06) | +1.00 ± 12.73 (1/2 higher; 95% CI -113.36 to "
            "+115.36) | -2.00 ± 13.44 (1/2 higher; 95% CI -122.71 to +118.71) |") in table  # t(0.975, 1) = 12.706
    assert "| c | - | - | - |" in table
    assert "| d | -10.00 (0/1 higher) | - | - |" in table  # one paired seed: no ± 0.00, no interval
    assert table.startswith("| against a, same seeds |")


def test_attention_table_and_columns_say_how_far_A_moved(tmp_path):
    from blo_mixup.report import attention_table, read_results_csv, result_row, write_results_csv

    def run(method, seed, attention):
        return {"task": "rte", "method": method, "seed": seed, "main_score": 0.5, "metrics": {"accuracy": 0.5},
                **({"blo": {"attention": {name: dict(zip(("mean", "min"), v)) for name, v in attention.items()}}} if attention else {})}

    rows = [result_row(r) for r in (run("vanilla", 1, None), run("blo-mixup", 1, {"q": (0.99, 0.9), "k": (0.95, 0.8)}),
                                    run("blo-mixup", 2, {"q": (0.97, 0.85), "k": (0.999, 0.95)}))]
    table = attention_table(rows, ["rte", "mrpc"], ["vanilla", "blo-mixup"])
    assert table.startswith("| attention A | rte | mrpc |\n|---|---|---|\n| blo-mixup | 0.950-0.999 (min 0.80) | - |\n")
    assert "| vanilla |" not in table
    assert attention_table(rows[:1], ["rte"], ["vanilla"]) == ""
    write_results_csv(rows, tmp_path / "results.csv")
    lines = list(csv.DictReader((tmp_path / "results.csv").open()))
    columns = ("attention_mean", "attention_min", "attention_mean_low", "attention_mean_high")
    assert [lines[0][c] for c in columns] == ["", "", "", ""]  # no attention: empty
    assert [float(r[c]) for r in lines[1:] for c in columns] == pytest.approx([0.97, 0.8, 0.95, 0.99, 0.9845, 0.85, 0.97, 0.999])
    # the table from results.csv alone is the table from the runs
    assert read_results_csv(tmp_path / "results.csv") == rows
    assert attention_table(read_results_csv(tmp_path / "results.csv"), ["rte", "mrpc"], ["vanilla", "blo-mixup"]) == table


def test_time_left_uses_each_methods_own_run_time():
    from blo_mixup.workers import time_left as _time_left

    remaining = [("rte", "vanilla", 3), ("rte", "blo-mixup", 1), ("rte", "blo-mixup", 2)]
    assert _time_left(remaining, []) is None
    assert _time_left(remaining, [("vanilla", 100.0), ("vanilla", 120.0)]) == 330.0  # unknown method: overall mean
    assert _time_left(remaining, [("vanilla", 100.0), ("blo-mixup", 400.0)]) == 900.0


def test_method_variants_parse_and_name_their_rows():
    from blo_mixup.compare import method_variants

    variants = method_variants("vanilla, blo-mixup+unroll_steps=5+outer-lr=1e+2,blo-mixup")
    assert variants == {"vanilla": ("vanilla", {}),
                        "blo-mixup+unroll-steps=5+outer-lr=1e+2": ("blo-mixup", {"unroll_steps": "5", "upper_lr": "1e+2"}),
                        "blo-mixup": ("blo-mixup", {})}


@pytest.mark.parametrize("methods, message", [
    ("blo-mixup+unroll-step=5", "unknown option 'unroll_step' in --methods blo-mixup+unroll-step=5 (did you mean 'unroll_steps'?)"),
    ("vanilla+unroll-steps=5", "unknown option 'unroll_steps'"),  # blo-mixup's option, not vanilla's
    ("blo-mixup+unroll-steps=", "option 'unroll_steps' has no value"),
    ("blo-mixup+seed=3", "'seed' cannot differ between methods"),
    ("blo-mixup+lr=1e-4+lr=2e-4", "option 'lr' is set twice"),
    ("blo-mixup+5", "write a variant as METHOD+OPTION=VALUE"),
    ("vanilla,vanilla+lr=1e-4,vanilla+lr=1e-4", "names vanilla+lr=1e-4 twice"),
    ("blo-mixop+unroll-steps=5", "unknown method"),
])
def test_method_variants_refuse_bad_specs(methods, message, tmp_path, capsys):
    assert main(["compare", "--tasks", "rte", "--methods", methods, "--output-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_variant_is_its_own_row_with_its_own_runs(glue_dir, tiny_bert_dir, tmp_path, capsys):
    """vanilla+epochs=2 beside vanilla: its own run folders, its option in its runs only, its own row;
    a bad value is refused before the first run."""
    out = tmp_path / "cmp"
    args = ["compare", "--tasks", "rte", "--seeds", "1", "--train-size", "16", "--epochs", "1", "--batch-size", "8",
            "--max-length", "32", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir), "--output-dir", str(out),
            "--no-save-model"]
    assert main([*args, "--methods", "vanilla,vanilla+epochs=-2"]) == 2
    assert "--epochs must be positive; got -2" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--methods", "vanilla,vanilla+epochs=2"]) == 0
    runs = out / "runs" / "rte"
    assert json.loads((runs / "vanilla" / "seed1" / "results.json").read_text())["config"]["epochs"] == 1
    variant = json.loads((runs / "vanilla+epochs=2" / "seed1" / "results.json").read_text())
    assert variant["config"]["epochs"] == 2 and variant["weight_updates"] == 4  # 16 examples, batch 8, 2 epochs
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["weight_updates"]) for r in rows] == [("vanilla", "2"), ("vanilla+epochs=2", "4")]
    assert "| vanilla+epochs=2 |" in (out / "summary.md").read_text()


def test_paired_against_several_rows(glue_dir, tiny_bert_dir, tmp_path, capsys):
    """--paired-against vanilla,vanilla+epochs=2: one paired table per named row; a name that is no row is refused."""
    out = tmp_path / "cmp"
    args = ["compare", "--tasks", "rte", "--methods", "vanilla,vanilla+epochs=2", "--seeds", "1-2", "--train-size", "16",
            "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--data-dir", str(glue_dir),
            "--model", str(tiny_bert_dir), "--output-dir", str(out), "--no-save-model"]
    assert main([*args, "--paired-against", "vanilla-matched"]) == 2
    assert "--paired-against vanilla-matched is not a row of --methods (vanilla, vanilla+epochs=2)" in capsys.readouterr().err
    assert main([*args, "--paired-against", "vanilla,vanilla+epochs=2"]) == 0
    summary = (out / "summary.md").read_text()
    first, second = summary.split("| against vanilla, same seeds |")[1].split("| against vanilla+epochs=2, same seeds |")
    assert "| vanilla+epochs=2 | " in first and "| vanilla | " in second


def test_the_failed_runs_table_counts_runs_at_or_below_the_constant():
    from blo_mixup.report import failed_table

    rows = [{"task": "cola", "method": m, "seed": s, "main_score": score, "constant_score": 0.0}
            for m, scores in [("vanilla", [0.0, 0.1, -0.02]), ("blo-mixup", [0.05, float("nan"), 0.2])]
            for s, score in enumerate(scores, 1)]
    rows.append({"task": "stsb", "method": "vanilla", "seed": 1, "main_score": 0.6, "constant_score": None})
    table = failed_table(rows, ["cola", "stsb"], ["vanilla", "blo-mixup"])
    assert "| vanilla | 2/3 | - |" in table and "| blo-mixup | 1/3 | - |" in table  # NaN fails; at the constant fails
    assert failed_table([{**r, "constant_score": None} for r in rows], ["cola"], ["vanilla"]) == ""


def test_the_time_table_gives_medians_and_ratios_to_the_first_row():
    from blo_mixup.report import time_table

    rows = [{"task": "sst2", "method": m, "seed": s, "train_time_s": t}
            for m, times in [("vanilla", [100.0, 120.0, 400.0]), ("blo-mixup", [450.0, 480.0, 500.0])]
            for s, t in enumerate(times, 1)]
    table = time_table(rows, ["sst2"], ["vanilla", "blo-mixup"])
    assert "| vanilla | 120 s (1.00x) |" in table and "| blo-mixup | 480 s (4.00x) |" in table  # medians: one slow run
    assert time_table([{**r, "train_time_s": None} for r in rows], ["sst2"], ["vanilla"]) == ""
