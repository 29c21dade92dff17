"""The `blo-mixup` command line: one module per command, each with add_parser(sub) and run(args) -> int.

argparse lives in this package only. A handler turns its parsed flags into plain values and calls the
domain module that does the work (finetune, predict, compare, curves, bench, export), which Python users
can call the same way. Bad input ends with one line on stderr ("blo-mixup: error: <problem>; <fix>") and
exit code 2.
"""

from __future__ import annotations

from ..errors import run_command
from . import bench, compare, curves, export, finetune, hypergradients, methods, predict
from .parser import Parser

# in the order `blo-mixup --help` lists them
COMMANDS = {module.NAME: module for module in (finetune, export, methods, predict, compare, curves, bench, hypergradients)}


def build_parser() -> Parser:
    parser = Parser(prog="blo-mixup", description="Fine-tune pretrained language models on small datasets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    def parse_and_run(argv):
        from ..logs import quiet_library_bars

        args = build_parser().parse_args(argv)
        quiet_library_bars()  # off a terminal: no tokenizing / weight-loading bars in the log file
        return COMMANDS[args.command].run(args)

    return run_command(parse_and_run, argv)


resolve_finetune = finetune.resolve_finetune
