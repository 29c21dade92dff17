"""The committed result tables stand alone: each docs/results/*/command.sh ends with the `blo-mixup compare
... --report-only` line that made its summary.md, and that line rebuilds summary.md byte for byte from the
folder's results.csv, with no run folder, no data and nothing trained. trend.py does the same from the
results.csv of three of them, and the learning curves' report from curves.csv."""

import importlib.util
import shlex
import shutil
from pathlib import Path

import pytest

from blo_mixup.cli import main

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def report_line(command_sh: Path) -> str:
    return command_sh.read_text().strip().splitlines()[-1]


TABLES = sorted(path.parent for path in RESULTS.glob("*/command.sh")
                if report_line(path).startswith("blo-mixup compare ") and "--report-only" in report_line(path).split())


def test_the_tables_have_report_commands():
    assert len(TABLES) >= 10, TABLES


@pytest.mark.parametrize("folder", TABLES, ids=lambda folder: folder.name)
def test_report_line_rebuilds_the_committed_summary(folder, tmp_path):
    argv = shlex.split(report_line(folder / "command.sh"))[1:]
    at = argv.index("--output-dir") + 1
    assert argv[at] == str(folder.relative_to(ROOT)), "the report line writes into another folder"
    argv[at] = str(tmp_path)
    if "--data-dir" in argv:  # results.csv holds every run's constant_score: the data must not be needed
        argv[argv.index("--data-dir") + 1] = str(tmp_path / "no-glue-here")
    shutil.copy(folder / "results.csv", tmp_path / "results.csv")

    assert main(argv) == 0
    assert (tmp_path / "summary.md").read_bytes() == (folder / "summary.md").read_bytes()
    assert (tmp_path / "results.csv").read_bytes() == (folder / "results.csv").read_bytes()
    assert not (tmp_path / "runs").exists()


def test_trend_rebuilds_the_committed_summary(tmp_path):
    spec = importlib.util.spec_from_file_location("results_trend", RESULTS / "trend.py")
    trend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trend)

    trend.main(["--seeds", "1-5", "--output-dir", str(tmp_path)])
    assert (tmp_path / "summary.md").read_bytes() == (RESULTS / "trend" / "summary.md").read_bytes()


def test_the_curves_report_rebuilds_from_curves_csv(tmp_path):
    folder = RESULTS / "curves-minilm"
    argv = shlex.split(report_line(folder / "command.sh"))[1:]
    assert argv[0] == "curves" and "--report-only" in argv
    argv[argv.index("--output-dir") + 1] = str(tmp_path)
    argv[argv.index("--data-dir") + 1] = str(tmp_path / "no-glue-here")
    shutil.copy(folder / "curves.csv", tmp_path / "curves.csv")

    assert main(argv) == 0
    assert (tmp_path / "curves.md").read_bytes() == (folder / "curves.md").read_bytes()
    assert (tmp_path / "curves.csv").read_bytes() == (folder / "curves.csv").read_bytes()


@pytest.mark.parametrize("task", ["sst2", "stsb"])
def test_the_hypergradient_accuracy_tables_rebuild_from_their_csv(task):
    from blo_mixup.hypergradient_check import read_rows, summary_table

    folder = RESULTS / "hypergradients-minilm" / task
    rows = read_rows(folder / "hypergradients.csv")
    assert {r["reference"] for r in rows} == {"unrolled", "implicit"} and len({r["step"] for r in rows}) == 4
    assert summary_table(rows) == (folder / "hypergradients.md").read_text()
