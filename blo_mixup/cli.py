"""The `blo-mixup` command: finetune, predict, compare, curves, bench, export, methods.

Bad input ends with one line on stderr ("blo-mixup: error: <problem>; <fix>") and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .errors import UserError, run_command
from .options import add_dataclass_flags, check_option_names, flag, resolve_options



class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix, like every other bad input."""

    def error(self, message):
        from .config import HF_NAMES

        # A Hugging Face TrainingArguments flag (--learning_rate, --num-train-epochs): name ours.
        for token in message.split():
            name = token.split("=")[0].lstrip("-").replace("-", "_")
            if token.startswith("--") and name in HF_NAMES:
                raise UserError(f"{token.split('=')[0]} is the Hugging Face TrainingArguments name; here it is "
                                f"{flag(HF_NAMES[name])} (config files accept '{name}' too)")
        raise UserError(f"{message}; see `{self.prog} --help`")


def build_parser() -> Parser:
    from .config import RunConfig
    from .methods import METHODS

    parser = Parser(prog="blo-mixup", description="Fine-tune pretrained language models on small datasets.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    finetune = sub.add_parser("finetune", help="one fine-tuning run: train, evaluate, save")
    finetune.add_argument("--config", help="JSON or YAML file of options (flags override it)")
    add_dataclass_flags(finetune.add_argument_group("run"), RunConfig)
    seen: set[str] = set()
    for name, cls in sorted(METHODS.items()):
        fields = dataclasses.fields(cls.options_class)
        if fields and all(f.name in seen for f in fields):  # a preset: another method's flags, other defaults
            base = cls.options_class.__mro__[1]
            changed = [f"{flag(f.name)} {f.default}" for f in fields
                       if f.default != getattr(base, "__dataclass_fields__", {}).get(f.name, f).default]
            finetune.add_argument_group(f"method {name}", f"the flags above, with these defaults: {', '.join(changed)}")
        elif fields:
            add_dataclass_flags(finetune.add_argument_group(f"method {name}"), cls.options_class, seen)

    export = sub.add_parser("export", help="write a run's model as a plain transformers model")
    export.add_argument("run_dir", help="a run folder written by `blo-mixup finetune`")
    export.add_argument("output", help="folder to write the merged model to")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    sub.add_parser("methods", help="list the fine-tuning methods and their options")

    from .bench import add_bench_parser
    from .compare import add_compare_parser
    from .curves import add_curves_parser
    from .predict import add_predict_parser

    add_predict_parser(sub)
    add_compare_parser(sub)
    add_curves_parser(sub)
    add_bench_parser(sub)
    return parser


def resolve_finetune(args: argparse.Namespace):
    """Merge dataclass defaults < config file < flags; returns (RunConfig, Method instance)."""
    from .config import read_config_file

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    values = read_config_file(args.config) if args.config else {}
    if args.config:
        check_option_names(values, f"config file {args.config}")
    values.update(given)
    return resolve_options(values)


def cmd_finetune(args) -> int:
    from .finetune import run_finetune

    run, method = resolve_finetune(args)
    results = run_finetune(run, method)
    if results is None:  # another process than rank 0 of --strategy distributed: rank 0 reports
        return 0
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in results["metrics"].items())
    print(f"{results['task']} {results['method']} seed {results['seed']} ({results['train_size']} examples): "
          f"evaluation set {metrics}; train {results['train_time_s']:.1f} s; run saved in {results['config']['output_dir']}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    path = export_run(args.run_dir, args.output, overwrite=args.overwrite)
    print(f"wrote a plain transformers model to {path}")
    return 0


def cmd_methods(args) -> int:
    from .methods import METHODS

    for name, cls in sorted(METHODS.items()):
        print(f"{name}: {cls.summary}")
        for f in dataclasses.fields(cls.options_class):
            print(f"    {flag(f.name)} (default {f.default}): {f.metadata.get('help', '')}")
    print("\nIn `blo-mixup compare --methods`, METHOD+OPTION=VALUE is a variant with options of its own, a row of "
          "its own: e.g. blo-mixup+unroll-steps=5 (docs/cli.md)")
    return 0


def main(argv=None) -> int:
    commands = {"finetune": cmd_finetune, "export": cmd_export, "methods": cmd_methods}

    def parse_and_run(args):
        from .bench import cmd_bench
        from .compare import cmd_compare
        from .curves import cmd_curves
        from .predict import cmd_predict

        commands.update(compare=cmd_compare, bench=cmd_bench, curves=cmd_curves, predict=cmd_predict)
        args = build_parser().parse_args(argv)
        from .logs import quiet_library_bars

        quiet_library_bars()  # off a terminal: no tokenizing / weight-loading bars in the log file
        return commands[args.command](args)

    return run_command(parse_and_run, None)


if __name__ == "__main__":
    sys.exit(main())
