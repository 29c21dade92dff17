"""`blo-mixup curves`: learning curves of plain fine-tuning on held-out training rows (curves.run_curves)."""

from __future__ import annotations

from .parser import given

NAME = "curves"


def add_parser(sub) -> None:
    parser = sub.add_parser(NAME, help="learning curves of plain fine-tuning on held-out training data (choose a protocol)")
    parser.add_argument("--tasks", required=True, help="comma-separated GLUE tasks, e.g. sst2,stsb")
    parser.add_argument("--train-sizes", default="300", help="training examples per seed, e.g. 300,1000 (default: 300)")
    parser.add_argument("--seeds", default="1-5", help="a list or a range, like 1,2,3 or 1-5 (default: 1-5)")
    parser.add_argument("--heads", default="cls", help="cls (pooler over [CLS], the model's own), mean (mean pooling), or both: cls,mean")
    parser.add_argument("--lrs", default="1e-4", help="learning rates, e.g. 1e-4,3e-4 (default: 1e-4)")
    parser.add_argument("--warmup-ratios", default="0.1", help="fractions of linear warmup, e.g. 0.06,0.1 (default: 0.1)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each run; held-out evaluation after each (default: 10)")
    parser.add_argument("--heldout-size", type=int, default=500, help="held-out training examples per seed (default: 500)")
    parser.add_argument("--model", default="minilm", help="model name or path (default: minilm)")
    parser.add_argument("--data-dir", help="local GLUE folder; default: the SST-2 shipped with the package, the hub for other tasks")
    parser.add_argument("--output-dir", required=True, help="folder for the runs, curves.csv, curves.md and curves.png")
    parser.add_argument("--shard", default="1/1", help="K/N: run every N-th grid point from the K-th, for N processes side by side")
    parser.add_argument("--report-only", action="store_true", help="run nothing; write the report from the finished runs")


def run(args) -> int:
    from ..curves import run_curves

    run_curves(**given(args))
    return 0
