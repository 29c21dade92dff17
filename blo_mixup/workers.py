"""`compare --workers N`: N local processes take the runs of one plan, each pinned to its own share of the
CPU cores (and given one GPU each when there are as many), with the plan's progress printed in one place.

The workers are ordinary compare processes on the same folder: each walks the plan and claims a run before
it starts it (claims.py), so every run is done once. Their own output goes to OUTPUT_DIR/workers/worker-<i>.log.
Ctrl-C stops them all: each saves its run's checkpoint at the end of the current step (as a SIGTERM'd run
does), finished runs stay, and the same command resumes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from .errors import run_command

POLL_S = 1.0


def cpu_shares(workers: int) -> list[list[int]]:
    """Each worker's CPU cores: contiguous blocks of the cores this process may use, as even as they come;
    with fewer cores than workers, workers share a core."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) < workers:
        return [[cores[i % len(cores)]] for i in range(workers)]
    size, extra = divmod(len(cores), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (i < extra)
        shares.append(cores[start:end])
        start = end
    return shares


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()  # asks the driver; does not start CUDA in this process
    except Exception:  # noqa: BLE001 - no usable torch.cuda: CPU workers
        return 0


def run_workers(target, values: dict, workers: int, plan: list[tuple[str, str, int]], output_dir: Path, finished) -> list[str]:
    """Run `plan` with `workers` processes, each calling target(**values, worker_index=i) (compare.run_compare,
    which walks the plan and claims each run); print each finished run as it lands. finished(key) -> (main score, run time in s) of a finished
    run, or None. Returns a line per worker that failed (empty when all went well)."""
    import multiprocessing

    logs = output_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    gpus = gpu_count()
    # the GPUs this process sees, by the ids the driver knows them by (CUDA_VISIBLE_DEVICES may already narrow them)
    gpu_ids = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",") if g][:gpus]
    shares = cpu_shares(workers)
    context = multiprocessing.get_context("spawn")  # fresh interpreters, started with the environment set below
    processes = []
    for index, cores in enumerate(shares, 1):
        env = {name: str(len(cores)) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        if gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = gpu_ids[(index - 1) % len(gpu_ids)]
        log = logs / f"worker-{index}.log"
        process = context.Process(target=_worker, args=(target, values, index, cores, str(log)), name=f"worker-{index}")
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)  # the new interpreter starts with them, before it imports torch
        try:
            process.start()
        finally:
            for name, value in saved.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value
        processes.append((process, log))
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}, " if gpu_ids else ""
        print(f"worker {index}: {where}{len(cores)} CPU thread(s) on core(s) {_ranges(cores)}; log {log}", flush=True)

    seen = {key for key in plan if finished(key) is not None}
    durations = []  # (row, seconds) of the runs finished while we watch
    try:
        while True:
            running = any(p.is_alive() for p, _ in processes)  # is_alive() also reaps a killed worker
            for key in plan:
                done = None if key in seen else finished(key)
                if done is not None:
                    seen.add(key)
                    durations.append((key[1], done[1]))
                    left = time_left([k for k in plan if k not in seen], durations) / len(processes)
                    print(f"[{len(seen)}/{len(plan)}] {key[0]} {key[1]} seed {key[2]}: main score {done[0]:.4f} in "
                          f"{done[1]:.0f} s" + (f", about {minutes(left)} left" if len(seen) < len(plan) else ""), flush=True)
            if not running:
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print("stopping the workers: each saves its run at the end of the current step ...", flush=True)
        for process, _ in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # not a second SIGINT: that would stop without saving
        for process, _ in processes:
            process.join()
        raise
    return [f"worker {i} stopped with exit code {p.exitcode}; see {log}"
            for i, (p, log) in enumerate(processes, 1) if p.exitcode != 0]


def _worker(target, values: dict, index: int, cores: list[int], log: str) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    with open(log, "a", buffering=1) as out:
        sys.stdout = sys.stderr = out
        import torch

        torch.set_num_threads(len(cores))
        code = run_command(lambda worker_index: target(**values, worker_index=worker_index) or 0, index)
    sys.exit(code)


def time_left(remaining, durations) -> float | None:
    """Seconds of runs left for the remaining (task, row, seed) runs: each row's mean run time so far (else
    the overall mean); None before any run has finished."""
    if not durations:
        return None
    overall = sum(d for _, d in durations) / len(durations)
    by_row: dict[str, list[float]] = {}
    for row, seconds in durations:
        by_row.setdefault(row, []).append(seconds)
    return sum(sum(by_row.get(r, [overall])) / len(by_row.get(r, [overall])) for _, r, _ in remaining)


def _ranges(cores: list[int]) -> str:
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 and cores == list(range(cores[0], cores[-1] + 1)) else ",".join(map(str, cores))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
