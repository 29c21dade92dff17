"""The `blo-mixup` command: finetune, predict, compare, curves, bench, export, methods.

Bad input ends with one line on stderr ("blo-mixup: error: <problem>; <fix>") and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from .errors import Stopped, UserError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix, like every other bad input."""

    def error(self, message):
        from .config import HF_NAMES

        # A Hugging Face TrainingArguments flag (--learning_rate, --num-train-epochs): name ours.
        for token in message.split():
            name = token.split("=")[0].lstrip("-").replace("-", "_")
            if token.startswith("--") and name in HF_NAMES:
                raise UserError(f"{token.split('=')[0]} is the Hugging Face TrainingArguments name; here it is "
                                f"{_flag(HF_NAMES[name])} (config files accept '{name}' too)")
        raise UserError(f"{message}; see `{self.prog} --help`")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(group, cls, seen: set[str] | None = None) -> None:
    """One flag per dataclass field; help and type come from the field. Defaults stay in the dataclass."""
    seen = set() if seen is None else seen
    for f in dataclasses.fields(cls):
        if f.name in seen:
            continue
        seen.add(f.name)
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        type_name = str(f.type)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if type_name.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = int if type_name.startswith("int") else float if type_name.startswith("float") else str
            kwargs["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        group.add_argument(_flag(f.name), help=f"{help_text} (default: {default})", **kwargs)


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
            changed = [f"{_flag(f.name)} {f.default}" for f in fields
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


def check_option_names(names, where: str, hint: str | None = None) -> None:
    """Reject a name that is no option of any method (RunConfig's fields and every method's options
    dataclass), with the closest valid name."""
    from .config import HF_NAMES, RunConfig, check_known_keys, field_names
    from .methods import METHODS

    names = [HF_NAMES.get(name, name) for name in names]  # TrainingArguments names are accepted
    all_option_keys = sorted({k for cls in METHODS.values() for k in field_names(cls.options_class)})
    check_known_keys(names, field_names(RunConfig) + all_option_keys, where, hint)


def resolve_options(values: dict[str, Any], python: bool = False):
    """(RunConfig, Method instance) from option values (names with underscores, as the dataclass fields):
    the one place where `finetune`'s flags and config file, and blo_mixup.fit's keyword arguments, become a
    run. An option of another method than the chosen one is refused, naming its method. python: name
    options as Python keywords (lr=...) in messages instead of flags (--lr)."""
    from .config import RunConfig, build_dataclass, field_names, translate_hf_names, with_train_size
    from .methods import METHODS, get_method

    values = translate_hf_names(values, "the options")
    method_name = values.get("method", RunConfig.method)
    method_cls = get_method(method_name)
    run_keys, method_keys = field_names(RunConfig), field_names(method_cls.options_class)
    for key in values:
        if key not in run_keys and key not in method_keys:
            owners = [n for n, cls in METHODS.items() if key in field_names(cls.options_class)]
            option, switch = (f"'{key}'", f"method='{owners[0]}'") if python else (_flag(key), f"--method {owners[0]}")
            raise UserError(f"option {option} belongs to method {', '.join(owners)}, not '{method_name}'; drop it or pass {switch}")
    run = with_train_size(build_dataclass(RunConfig, {k: v for k, v in values.items() if k in run_keys}, "the run options"))
    options = build_dataclass(method_cls.options_class, {k: v for k, v in values.items() if k in method_keys}, f"the {method_name} options")
    return run, method_cls(options, run)


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
            print(f"    {_flag(f.name)} (default {f.default}): {f.metadata.get('help', '')}")
    return 0


def main(argv=None) -> int:
    commands = {"finetune": cmd_finetune, "export": cmd_export, "methods": cmd_methods}
    try:
        from .bench import cmd_bench
        from .compare import cmd_compare
        from .curves import cmd_curves
        from .predict import cmd_predict

        commands.update(compare=cmd_compare, bench=cmd_bench, curves=cmd_curves, predict=cmd_predict)
        args = build_parser().parse_args(argv)
        from .logs import quiet_library_bars

        quiet_library_bars()  # off a terminal: no tokenizing / weight-loading bars in the log file
        return commands[args.command](args)
    except UserError as e:
        print(f"blo-mixup: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Stopped as e:
        print(f"blo-mixup: {e}; re-run the same command (finetune: with --resume) to go on", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("blo-mixup: interrupted; finished runs and checkpoints are kept: re-run the same command "
              "(finetune: with --resume) to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
