"""Several compare processes on one output folder: --shard K/N, --workers N, and a killed worker.

Every run is done exactly once (a run is claimed before it starts), each process leaves results.csv with
every finished run, and a run whose worker was killed resumes to the same numbers."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from blo_mixup import claims
from blo_mixup.cli import main
from blo_mixup.workers import cpu_shares
from test_resume import assert_same_run


def compare_args(glue_dir, model_dir, out, *extra) -> list[str]:
    return [str(a) for a in ["compare", "--tasks", "rte", "--methods", "vanilla,vanilla+lr=3e-4", "--seeds", "1-3",
                             "--train-size", 16, "--epochs", 1, "--batch-size", 8, "--max-length", 32, "--data-dir", glue_dir,
                             "--model", model_dir, "--output-dir", out, "--report-to", "none", *extra]]


PLAN = {("rte", m, s) for m in ("vanilla", "vanilla+lr=3e-4") for s in (1, 2, 3)}


def started_runs(text: str) -> Counter:
    """How often each (task, row, seed) was started, from compare's output lines."""
    return Counter((t, m, int(s)) for t, m, s in re.findall(r"\] (\S+) (\S+) seed (\d+): running(?:,|$)", text, re.MULTILINE))


def table(out: Path) -> set:
    lines = (out / "results.csv").read_text().splitlines()[1:]
    return {(task, method, int(seed)) for task, method, seed, *_ in (line.split(",") for line in lines)}


# ------------------------------------------------------------------------------------------------ claims


def test_a_claim_is_held_once_and_a_dead_owners_claim_is_taken_over(tmp_path):
    path = claims.claim_path(tmp_path, "rte", "vanilla", 1)
    first = claims.try_claim(path, timeout_s=60)
    assert first is not None and claims.try_claim(path, timeout_s=60) is None  # held by a live process
    first.release()
    assert not path.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"id": "x", "host": __import__("socket").gethostname(), "pid": int(dead.stdout)}))
    assert claims.is_stale(path, timeout_s=60)  # its process is gone: stale at once
    taken = claims.try_claim(path, timeout_s=60)
    assert taken is not None and json.loads(path.read_text())["pid"] == os.getpid()
    assert claims.try_claim(path, timeout_s=60) is None  # a late taker finds the takeover done
    taken.release()
    assert list(path.parent.iterdir()) == []

    path.write_text(json.dumps({"id": "y", "host": "another-machine", "pid": 1}))
    assert not claims.is_stale(path, timeout_s=60)  # another machine's claim: only its heartbeat counts
    old = time.time() - 120
    os.utime(path, (old, old))
    assert claims.is_stale(path, timeout_s=60)


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path):
    path = claims.claim_path(tmp_path, "rte", "vanilla", 1)
    old = time.time() - 1000
    with claims.try_claim(path, timeout_s=60, heartbeat_s=0.05):
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5
    assert not path.exists()


def test_cpu_shares_split_the_cores():
    cores = sorted(os.sched_getaffinity(0))
    shares = cpu_shares(2)
    assert len(shares) == 2 and all(shares)
    if len(cores) >= 2:
        assert sorted(shares[0] + shares[1]) == cores and not set(shares[0]) & set(shares[1])
    assert cpu_shares(len(cores) + 1)[-1] == [cores[0]]  # more workers than cores: they share


# --------------------------------------------------------------------------------------- shards, workers


@pytest.mark.slow
def test_shards_and_a_whole_plan_side_by_side_run_each_run_once(glue_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [[sys.executable, "-m", "blo_mixup.cli", *compare_args(glue_dir, tiny_bert_dir, out, *extra)]
                for extra in (["--shard", "1/2"], ["--shard", "2/2"], [])]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for c in commands]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    started = started_runs("".join(outputs))
    assert set(started) == PLAN and set(started.values()) == {1}, started  # every run once, by one process
    assert set(started_runs(outputs[0])) <= {("rte", "vanilla", 1), ("rte", "vanilla", 3), ("rte", "vanilla+lr=3e-4", 2)}
    assert table(out) == PLAN
    assert not list((out / "claims").rglob("*.json"))  # every claim released
    # a shard run again finds its part done
    again = subprocess.run(commands[0], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and not started_runs(again.stdout) and again.stdout.count("done earlier") == 3


@pytest.mark.slow
def test_two_workers_run_the_plan_once(glue_dir, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(compare_args(glue_dir, tiny_bert_dir, out, "--workers", "2")) == 0
    printed = capsys.readouterr().out
    assert "worker 1:" in printed and "worker 2:" in printed and "[6/6]" in printed
    logs = [(out / "workers" / f"worker-{i}.log").read_text() for i in (1, 2)]
    started = started_runs("".join(logs))
    assert set(started) == PLAN and set(started.values()) == {1}, started
    assert all(started_runs(log) for log in logs)  # both took runs
    assert table(out) == PLAN and "| vanilla+lr=3e-4 |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_a_killed_worker_s_run_resumes_to_the_same_numbers(glue_dir, tiny_bert_dir, tmp_path):
    """SIGKILL one worker once its run has a checkpoint; compare started again finishes the plan, and that
    run's results equal an uninterrupted run's at the same thread count (one per worker)."""
    extra = ["--methods", "blo-mixup", "--seeds", "1-2", "--epochs", "3", "--train-size", "32", "--save-steps", "1", "--workers", "2"]
    whole, out = tmp_path / "whole", tmp_path / "killed"
    assert main(compare_args(glue_dir, tiny_bert_dir, whole, *extra)) == 0

    command = [sys.executable, "-m", "blo_mixup.cli", *compare_args(glue_dir, tiny_bert_dir, out, *extra)]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, victim = time.time() + 300, None
    while victim is None and parent.poll() is None and time.time() < deadline:
        for claim in (out / "claims").glob("rte/blo-mixup/seed*.json"):
            seed = claim.stem
            if list((out / "runs" / "rte" / "blo-mixup" / seed / "checkpoints").glob("stage*.pt")):
                victim = (json.loads(claim.read_text())["pid"], seed)
                break
        time.sleep(0.02)
    assert victim is not None, "no run reached a checkpoint while its worker was alive"
    os.kill(victim[0], signal.SIGKILL)
    printed = parent.communicate(timeout=600)[0]
    assert parent.returncode in (0, 2), printed  # 2: the killed worker's run was left unfinished
    killed_run = out / "runs" / "rte" / "blo-mixup" / victim[1]
    if parent.returncode == 2:
        assert "stopped with exit code -9" in printed and "run the same command again" in printed
        assert not (killed_run / "results.json").exists()
        assert main(compare_args(glue_dir, tiny_bert_dir, out, *extra)) == 0  # finishes the plan
    assert table(out) == {("rte", "blo-mixup", 1), ("rte", "blo-mixup", 2)}
    assert_same_run(whole / "runs" / "rte" / "blo-mixup" / victim[1], killed_run)  # every number and weight


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_keeps_what_finished(glue_dir, tiny_bert_dir, tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the workers save and stop, the claims are
    released, and the same command then finishes the plan."""
    out = tmp_path / "cmp"
    args = compare_args(glue_dir, tiny_bert_dir, out, "--workers", "2", "--epochs", "8", "--train-size", "32", "--save-steps", "1")
    # its own process group, as a terminal's job; SIGINT at its default even where this test runs in the
    # background of a shell, which starts background jobs with SIGINT ignored (Python then keeps it ignored)
    parent = subprocess.Popen([sys.executable, "-m", "blo_mixup.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list((out / "runs").glob("*/*/seed*/checkpoints/stage*.pt")) and time.time() < deadline:
        time.sleep(0.02)  # the first saved step of the first runs: the plan's other runs are still to come
    os.killpg(parent.pid, signal.SIGINT)
    printed = parent.communicate(timeout=300)[0]
    assert parent.returncode == 130, printed
    assert "stopping the workers" in printed and "[6/6]" not in printed
    # every worker let go of its run (a worker stopped between its claim and its run leaves a dead one)
    assert all(claims.is_stale(path, 600) for path in (out / "claims").rglob("*.json"))
    assert main(args) == 0
    assert table(out) == PLAN


def test_processes_rewriting_one_plot_never_move_each_other_s_file(tmp_path):
    """Each writer saves through a temporary file of its own (a shared name let one process rename the
    other's file away mid-write: compare --shard failed so once in four runs)."""
    import threading

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from blo_mixup.runs import save_figure_atomic

    path, errors = tmp_path / "summary.png", []

    def writer():
        figure = plt.figure()
        try:
            for _ in range(15):
                save_figure_atomic(figure, path, dpi=30)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and path.read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir()] == ["summary.png"]
