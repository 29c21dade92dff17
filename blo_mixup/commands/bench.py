"""`blo-mixup bench`: per-step time and peak memory of methods against plain fine-tuning (bench.run_bench)."""

from __future__ import annotations

from .parser import add_dataclass_flags, given

NAME = "bench"


def add_parser(sub) -> None:
    from ..bench import BenchOptions

    parser = sub.add_parser(NAME, help="per-step time and peak memory of methods vs plain fine-tuning")
    add_dataclass_flags(parser, BenchOptions)


def run(args) -> int:
    from ..bench import BenchOptions, format_report, run_bench

    options = BenchOptions(**given(args))
    report = run_bench(options)
    print(format_report(report))
    if options.json:
        from ..runs import write_json_atomic

        write_json_atomic(options.json, report)
    return 0
