"""`blo-mixup compare`: every (task, method, seed) run, resumable, then results.csv, summary.md, summary.png.

The tasks are GLUE tasks (--tasks) or your own data (--train-file or --dataset, one "task" named after it).
Each run lives in OUTPUT_DIR/runs/<task>/<method>/seed<seed>/. A run is finished when its folder holds
results.json or OUTPUT_DIR/results.csv holds its row (a table committed without its run folders), and is
never redone; a killed run continues from its checkpoints. A run folder made with other options than the
plan's is refused. results.csv is rewritten from both, so it keeps every finished run of the folder, inside
this plan or not, and --report-only needs neither the run folders nor the data. A method may carry options
of its own for its runs only, as a variant ("blo-mixup+unroll-steps=5"): its own row, its own run folders.

Several processes may share one folder (--workers N, --shard K/N, or machines on a shared filesystem):
each claims a run before starting it (claims.py), so every run is done once, and each rewrites
results.csv, summary.md and summary.png atomically from every finished run when it ends, so the last one
to end leaves the complete table.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from pathlib import Path

from .claims import DEFAULT_TIMEOUT_S
from .config import comma_list, seed_list, shard_of
from .errors import UserError


def run_compare(*, methods: str, output_dir: str | Path, tasks: str | None = None, seeds: str = "1-5",
                paired_against: str | None = None, report_only: bool = False, workers: int = 1, shard: str = "1/1",
                claim_timeout: float = DEFAULT_TIMEOUT_S, config: str | None = None, worker_index: int | None = None,
                **options) -> None:
    """Run the plan (tasks x methods x seeds) and write results.csv, summary.md and summary.png; the
    `compare` command's options as keywords (methods "vanilla,blo-mixup", seeds "1-5", ...); options: the
    shared run options and the methods' own (lr=..., unroll_steps=...), for every run. worker_index: set in
    the processes of workers > 1, which run and leave the report to their parent."""
    # what each worker process runs: this call, as given (its own shard of the plan included)
    same_call = dict(methods=methods, output_dir=str(output_dir), tasks=tasks, seeds=seeds, paired_against=paired_against,
                     shard=shard, claim_timeout=claim_timeout, config=config, **options)
    from .options import resolve_options
    from .config import RunConfig, check_data_options, field_names, read_config_file
    from .data import get_task
    from .datafiles import load_task_data
    from .methods import get_method
    from .report import attention_table, failed_table, paired_table, summary_plot, summary_table, time_table, updates_table, write_results_csv
    from .runs import write_text_atomic
    from .workers import run_workers

    glue = tasks is not None  # else your own data (--train-file or --dataset): one "task"
    tasks = [get_task(t).name for t in comma_list(tasks, "tasks")] if glue else [None]
    variants = method_variants(methods)  # row label -> (method, its own option values)
    methods = list(variants)  # the rows, by label
    seeds = seed_list(seeds)
    output_dir = Path(output_dir)
    baselines = comma_list(paired_against, "paired-against") if paired_against else methods[:1]
    for baseline in baselines:
        if baseline not in variants:
            raise UserError(f"--paired-against {baseline} is not a row of --methods ({', '.join(methods)}); name one of them")
    shared = options
    shard = shard_of(shard)
    if workers < 1 or claim_timeout <= 0:
        raise UserError("--workers must be at least 1 and --claim-timeout positive")
    file_values = read_config_file(config) if config else {}

    def resolve(task, label, seed, run_dir):
        method, own_values = variants[label]
        own_keys = set(field_names(RunConfig)) | set(field_names(get_method(method).options_class))
        values = {k: v for k, v in {**file_values, **shared}.items() if k in own_keys}
        # A run killed earlier continues from its checkpoints (and a fresh one starts from scratch).
        values.update(own_values, method=method, seed=seed, output_dir=str(run_dir), resume=True, **({"task": task} if glue else {}))
        return resolve_options(values)

    if not glue and not any({**file_values, **shared}.get(k) for k in ("train_file", "dataset")):
        raise UserError("no data given; pass --tasks (GLUE tasks, e.g. rte,mrpc) or your own data with --train-file "
                        "or --dataset (docs/data.md)")
    for method in methods:  # every method's options are checked before the first run starts
        check_data_options(resolve(tasks[0], method, seeds[0], output_dir)[0])
    data = None
    if not glue:  # read and check the data before the first run; its name is the task's
        data = load_task_data(resolve(None, methods[0], seeds[0], output_dir)[0])
        tasks = [data.task.name]
    output_dir.mkdir(parents=True, exist_ok=True)
    plan = [(t, m, s) for t in tasks for m in methods for s in seeds]
    mine = plan if report_only else plan[shard[0] - 1::shard[1]]
    runs = {key: resolve(key[0] if glue else None, key[1], key[2], run_folder(output_dir, *key)) for key in mine}
    refuse_other_options(runs)  # before anything runs or is reported
    if not report_only:
        if workers > 1 and not worker_index:
            failed = run_workers(run_compare, same_call, workers, mine, output_dir, _finished_lookup(output_dir))
        else:
            run_plan(runs, output_dir, claim_timeout)
            failed = []
        if worker_index:
            return  # the parent writes the report

    finished = finished_rows(output_dir)
    results = [finished[key] for key in plan if key in finished]
    if report_only:
        for i, key in enumerate(plan, 1):
            state = f"done earlier, main score {finished[key]['main_score']:.4f}" if key in finished else "not run yet"
            print(f"[{i}/{len(plan)}] {key[0]} {key[1]} seed {key[2]}: {state}", flush=True)

    planned = set(plan)  # this plan's rows first, in its order, then the folder's other finished runs
    rows = results + [row for key, row in finished.items() if key not in planned]
    reference = _constant_prediction_scores(rows, tasks, seeds, lambda task, seed: resolve(task, methods[0], seed, output_dir)[0], data)
    write_results_csv(rows, output_dir / "results.csv")
    if not results:
        raise UserError(f"no finished run in {output_dir} yet; run the comparison without --report-only first")
    table = summary_table(results, tasks, methods, seeds, reference)
    heldout = resolve(tasks[0], methods[0], seeds[0], output_dir)[0].heldout_size
    if heldout:  # say so before anyone reads the numbers as dev scores
        table = f"Scored on {heldout} held-out training examples per seed (--heldout-size), not on the dev set.\n\n{table}"
    table += "\n" + updates_table(results, tasks, methods)
    for extra in (failed_table(results, tasks, methods), time_table(results, tasks, methods)):
        if extra:
            table += "\n" + extra
    attention = attention_table(results, tasks, methods)
    if attention:  # blo-mixup's rows: how far A moved from 1
        table += "\n" + attention
    if len(methods) > 1 and len({r["seed"] for r in results}) > 1:
        for baseline in baselines:
            table += "\n" + paired_table(results, tasks, [baseline, *(m for m in methods if m != baseline)])
    write_text_atomic(output_dir / "summary.md", table)
    summary_plot(results, tasks, methods, output_dir / "summary.png", reference)
    print(table)
    print(f"wrote {output_dir / 'results.csv'}, {output_dir / 'summary.md'}, {output_dir / 'summary.png'}")
    left = sum(key not in finished for key in mine)
    if not report_only and failed and left:
        raise UserError("; ".join(failed) + f"; {left} run(s) of the plan not finished: run the same command again to finish them")
    for line in [] if report_only else failed:
        print(f"{line} (its runs were finished by the others)", flush=True)


def run_folder(output_dir: Path, task: str, label: str, seed: int) -> Path:
    return output_dir / "runs" / task / label / f"seed{seed}"


def run_plan(runs: dict, output_dir: Path, claim_timeout: float) -> None:
    """Run each (task, row, seed) of `runs` ({key: (RunConfig, method)}) that is not finished, claimed first,
    so that other processes on the folder skip it; a run another live process holds is left to it."""
    from .claims import claim_path, holder, try_claim
    from .finetune import run_finetune
    from .workers import minutes, time_left

    finished = _finished_lookup(output_dir)
    durations = []
    for i, ((task, label, seed), (run, method)) in enumerate(runs.items(), 1):
        line = f"[{i}/{len(runs)}] {task} {label} seed {seed}"
        done = finished((task, label, seed))
        if done is not None:
            print(f"{line}: done earlier, main score {done[0]:.4f}", flush=True)
            continue
        path = claim_path(output_dir, task, label, seed)
        claim = try_claim(path, claim_timeout)
        if claim is None:
            print(f"{line}: running in another process ({holder(path)}); left to it", flush=True)
            continue
        with claim:
            if finished((task, label, seed)) is not None:  # it finished between the look and the claim
                continue
            eta = time_left(list(runs)[i - 1:], durations)
            print(f"{line}: running" + (f", about {minutes(eta)} left" if eta else ""), flush=True)
            started = time.perf_counter()
            result = run_finetune(run, method)
            durations.append((label, time.perf_counter() - started))
            print(f"{line}: main score {result['main_score']:.4f} in {durations[-1][1]:.0f} s", flush=True)


def _finished_lookup(output_dir: Path):
    """finished(key) -> (main score, run time in s) of a finished run (its results.json, or its row in
    results.csv when the folder was committed without it), else None; results.csv is read once, the run
    folders at every call (other processes may finish runs meanwhile)."""
    import json

    from .report import read_results_csv
    from .runs import RESULTS

    csv_path = output_dir / "results.csv"
    rows = ({(r["task"], r["method"], r["seed"]): (r["main_score"], r["total_time_s"] or 0.0) for r in read_results_csv(csv_path)}
            if csv_path.is_file() else {})

    def finished(key):
        path = run_folder(output_dir, *key) / RESULTS
        if path.is_file():
            result = json.loads(path.read_text())
            return result["main_score"], result.get("total_time_s") or 0.0
        return rows.get(key)

    return finished


def refuse_other_options(runs: dict) -> None:
    """A finished run folder of the plan whose recorded options differ from the plan's is a UserError:
    mixing it in would put two protocols in one table."""
    from .checkpoint import changed_options
    from .config import to_dict, with_train_size
    from .runs import RESULTS, read_results

    for run, method in runs.values():
        if (Path(run.output_dir) / RESULTS).is_file():
            recorded = read_results(run.output_dir)["config"]
            changed = changed_options(recorded, {**to_dict(with_train_size(run)), "method_options": dataclasses.asdict(method.options)})
            if changed:
                raise UserError(f"{run.output_dir} holds a run made with other options ({changed}); give the "
                                f"comparison those options, or another --output-dir")


# "+name=" starts the next option of a variant, so a value such as 1e+2 stays whole.
VARIANT_OPTION = re.compile(r"\+(?=[A-Za-z][\w-]*=)")
NOT_PER_METHOD = ("task", "method", "seed", "output_dir", "overwrite", "resume", "heldout_size")


def method_variants(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """--methods 'vanilla,blo-mixup+unroll-steps=5' -> {label: (method, option values)}:
    {'vanilla': ('vanilla', {}), 'blo-mixup+unroll-steps=5': ('blo-mixup', {'unroll_steps': '5'})}.
    Values stay strings here; they are typed and range-checked with the method's other options."""
    from .config import RENAMED, RunConfig, check_known_keys, field_names
    from .methods import get_method

    variants = {}
    for spec in comma_list(text, "methods"):
        method, *parts = VARIANT_OPTION.split(spec)
        if "+" in method:  # a '+' not followed by OPTION=
            raise UserError(f"--methods {spec}: write a variant as METHOD+OPTION=VALUE, e.g. blo-mixup+unroll-steps=5")
        known = field_names(RunConfig) + field_names(get_method(method).options_class)
        values, spelled = {}, []  # the label keeps the user's spelling of each option (old names too)
        for part in parts:
            key, _, value = part.partition("=")
            spelled.append((key.replace("_", "-"), value))
            key = RENAMED.get(key.replace("-", "_"), key.replace("-", "_"))
            if not value:
                raise UserError(f"--methods {spec}: option '{key}' has no value; write it as {method}+{key.replace('_', '-')}=VALUE")
            if key in values:
                raise UserError(f"--methods {spec}: option '{key}' is set twice; keep one")
            if key in NOT_PER_METHOD:
                raise UserError(f"--methods {spec}: '{key}' cannot differ between methods of one comparison; "
                                f"run another comparison for it")
            values[key] = value
        check_known_keys(values, known, f"--methods {spec}",
                         f"a variant takes the run options and {method}'s own (`blo-mixup finetune --help`), without the leading dashes")
        label = method + "".join(f"+{k}={v}" for k, v in spelled)
        if label in variants:
            raise UserError(f"--methods names {label} twice; drop one")
        variants[label] = (method, values)
    return variants


def finished_rows(output_dir: Path) -> dict[tuple[str, str, int], dict]:
    """(task, row label, seed) -> results.csv row (report.result_row) of every finished run in a comparison
    folder: the rows of its results.csv, then its run folders' results.json (which win: they hold the run)."""
    from .report import read_results_csv, result_row
    from .runs import RESULTS, read_results

    rows = {}
    if (output_dir / "results.csv").is_file():
        rows = {(r["task"], r["method"], r["seed"]): r for r in read_results_csv(output_dir / "results.csv")}
    for path in sorted((output_dir / "runs").glob(f"*/*/seed*/{RESULTS}")):
        task, label, seed = path.parts[-4], path.parts[-3], int(path.parts[-2].removeprefix("seed"))
        rows[task, label, seed] = result_row({**rows.get((task, label, seed), {}), **read_results(path.parent), "method": label})
    return rows


def _constant_prediction_scores(rows, tasks, seeds, run_of, data=None) -> dict[str, float]:
    """Each planned task's score for a constant prediction on the runs' evaluation set (the dev set, or with
    --heldout-size each seed's held-out rows: the mean over the plan's seeds), and the constant_score of every
    row that lacks it filled in. Read from the rows where they hold it (runs record it), else from the data;
    run_of(task, seed) is a run's RunConfig. A task whose data cannot be read now goes without it."""
    from .datafiles import load_task_data
    from .metrics import constant_prediction_score

    reference = {}
    for task in dict.fromkeys([*tasks, *(r["task"] for r in rows)]):
        if data is not None and task != data.task.name:
            continue  # your own data's comparison cannot read another task's data
        task_rows = [r for r in rows if r["task"] == task]
        per_seed = {r["seed"]: r["constant_score"] for r in task_rows if r.get("constant_score") is not None}
        try:
            for seed in sorted({r["seed"] for r in task_rows} - set(per_seed)):
                run = run_of(task, seed)
                if data is not None:
                    per_seed[seed] = constant_prediction_score(data.task, data.evaluation)
                elif run.heldout_size or not per_seed:  # the dev set is the same for every seed
                    per_seed[seed] = constant_prediction_score(task, load_task_data(run).evaluation)
                else:
                    per_seed[seed] = next(iter(per_seed.values()))
        except (UserError, OSError, ValueError) as exc:
            print(f"no constant-prediction reference for {task}: {exc}", flush=True)
            continue
        for r in task_rows:
            if r.get("constant_score") is None:
                r["constant_score"] = per_seed[r["seed"]]
        planned = [per_seed[s] for s in seeds if s in per_seed]
        if task in tasks and planned:
            reference[task] = statistics.fmean(planned)
    return reference
