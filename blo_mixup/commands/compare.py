"""`blo-mixup compare`: methods x seeds x tasks, then results.csv, summary.md, summary.png (compare.run_compare)."""

from __future__ import annotations

import dataclasses

from ..claims import DEFAULT_TIMEOUT_S
from .parser import add_dataclass_flags, given

NAME = "compare"
PER_RUN = ("task", "method", "seed", "output_dir", "overwrite", "resume")  # set by compare for each run


def add_parser(sub) -> None:
    from ..config import RunConfig
    from ..methods import METHODS

    parser = sub.add_parser(NAME, help="run methods x seeds x tasks; write results.csv, summary.md, summary.png")
    parser.add_argument("--tasks", help="comma-separated GLUE tasks, e.g. rte,mrpc; or your own data instead: --train-file or --dataset")
    parser.add_argument("--methods", required=True,
                        help="comma-separated methods, e.g. vanilla,blo-mixup; a variant sets options for its runs only: blo-mixup+unroll-steps=5")
    parser.add_argument("--seeds", default="1-5", help="seeds: a list or a range, like 1,2,3 or 1-5 (default: 1-5)")
    parser.add_argument("--output-dir", required=True, help="folder for the runs and the summary")
    parser.add_argument("--paired-against", help="comma-separated rows of --methods to pair every other row against "
                        "on the same seeds, one table each, e.g. vanilla,vanilla-matched (default: the first method)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write results.csv, summary.md and summary.png from the runs finished so far")
    parser.add_argument("--workers", type=int, default=1,
                        help="run the plan with N local processes, each on its own share of the CPU cores (and one GPU "
                        "each when there are N); their logs go to OUTPUT_DIR/workers/ (default: 1, this process)")
    parser.add_argument("--shard", default="1/1",
                        help="K/N: run the K-th of N parts of the plan (runs K, K+N, ...), for N jobs that share the "
                        "output folder, e.g. a Slurm array: --shard $SLURM_ARRAY_TASK_ID/N (default: 1/1, all of it)")
    parser.add_argument("--claim-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds without a heartbeat after which a run claimed by another process on another "
                        f"machine is taken over and resumed (on this machine: as soon as that process is gone) (default: {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--config", help="JSON or YAML file of options shared by all runs")
    shared = [f for f in dataclasses.fields(RunConfig) if f.name not in PER_RUN]
    SharedOptions = dataclasses.make_dataclass("SharedOptions", [(f.name, f.type, f) for f in shared])
    add_dataclass_flags(parser.add_argument_group("run options (all runs)"), SharedOptions)
    seen: set[str] = set()
    for name, cls in sorted(METHODS.items()):
        if dataclasses.fields(cls.options_class):
            add_dataclass_flags(parser.add_argument_group(f"method {name} (its runs only)"), cls.options_class, seen)


def run(args) -> int:
    from ..compare import run_compare

    run_compare(**given(args))
    return 0
