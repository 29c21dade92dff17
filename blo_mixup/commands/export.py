"""`blo-mixup export`: a run's model as a plain transformers model (export.export_run)."""

from __future__ import annotations

NAME = "export"


def add_parser(sub) -> None:
    parser = sub.add_parser(NAME, help="write a run's model as a plain transformers model")
    parser.add_argument("run_dir", help="a run folder written by `blo-mixup finetune`")
    parser.add_argument("output", help="folder to write the merged model to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args) -> int:
    from ..export import export_run

    path = export_run(args.run_dir, args.output, overwrite=args.overwrite)
    print(f"wrote a plain transformers model to {path}")
    return 0
