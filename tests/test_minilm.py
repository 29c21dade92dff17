"""The embedded default model (the packaged MiniLM) through the core method and the bench, briefly."""

import json

import pytest

from blo_mixup.cli import main


@pytest.mark.slow
def test_blo_mixup_on_minilm(glue_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", "--method", "blo-mixup", "--task", "mrpc", "--data-dir", str(glue_dir), "--model", "minilm",
                 "--train-size", "40", "--epochs", "1", "--batch-size", "8", "--max-length", "48",
                 "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"accuracy", "f1"}
    assert results["blo"]["phase1"]["upper_steps"] == 4
    means = [s["mean"] for s in results["blo"]["attention"].values()]
    assert len(means) == 6 * 6 + 1 and min(means) < 1.0  # 6 layers x 6 matrices + pooler; A moved


@pytest.mark.slow
def test_bench_reports_ratios(tmp_path, capsys):
    report_file = tmp_path / "bench.json"
    assert main(["bench", "--model", "minilm", "--batch-size", "2", "--max-length", "16", "--steps", "1", "--warmup", "0",
                 "--unroll-steps", "2", "--methods", "vanilla,blo-mixup,r-drop", "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    cases = {row["case"]: row for row in report["cases"]}
    assert set(cases) == {"vanilla", "mixup-step", "blo-darts-u2", "r-drop"}
    assert cases["vanilla"]["time_ratio"] == 1.0 and cases["vanilla"]["memory_ratio"] == 1.0
    assert all(row["step_s"] > 0 and row["peak_mib"] > row["resident_mib"] > 0 for row in cases.values())
    assert report["whole_run"]["blo-darts-u2"]["ratio"] > 0
    assert "x vanilla" in capsys.readouterr().out
