"""`blo-mixup hypergradients`: each hypergradient against the exact references on a real model
(hypergradient_check.run_hypergradient_check)."""

from __future__ import annotations

from pathlib import Path

from .parser import add_dataclass_flags, given

NAME = "hypergradients"


def add_parser(sub) -> None:
    from ..hypergradient_check import CheckOptions

    parser = sub.add_parser(NAME, help="how close each hypergradient comes to the exact ones on a real model, and its cost")
    add_dataclass_flags(parser, CheckOptions)


def run(args) -> int:
    from ..errors import UserError
    from ..hypergradient_check import CheckOptions, run_hypergradient_check

    options = CheckOptions(**given(args))
    if not options.output_dir:
        raise UserError("--output-dir is missing; name the folder for hypergradients.csv, .md and .png")
    run_hypergradient_check(options)
    folder = Path(options.output_dir)
    print((folder / "hypergradients.md").read_text())
    print(f"wrote {folder / 'hypergradients.csv'}, {folder / 'hypergradients.md'}, {folder / 'hypergradients.png'}")
    return 0
