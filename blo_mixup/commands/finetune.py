"""`blo-mixup finetune`: one fine-tuning run (finetune.run_finetune), from flags and a config file."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import flag
from .parser import add_dataclass_flags, given

NAME = "finetune"


def add_parser(sub) -> None:
    from ..config import RunConfig
    from ..methods import METHODS

    parser = sub.add_parser(NAME, help="one fine-tuning run: train, evaluate, save")
    parser.add_argument("--config", help="JSON or YAML file of options (flags override it)")
    add_dataclass_flags(parser.add_argument_group("run"), RunConfig)
    seen: set[str] = set()
    for name, cls in sorted(METHODS.items()):
        fields = dataclasses.fields(cls.options_class)
        if fields and all(f.name in seen for f in fields):  # a preset: another method's flags, other defaults
            base = cls.options_class.__mro__[1]
            changed = [f"{flag(f.name)} {f.default}" for f in fields
                       if f.default != getattr(base, "__dataclass_fields__", {}).get(f.name, f).default]
            parser.add_argument_group(f"method {name}", f"the flags above, with these defaults: {', '.join(changed)}")
        elif fields:
            add_dataclass_flags(parser.add_argument_group(f"method {name}"), cls.options_class, seen)


def resolve_finetune(args: argparse.Namespace):
    """Merge dataclass defaults < config file < flags; returns (RunConfig, Method instance)."""
    from ..config import read_config_file
    from ..options import check_option_names, resolve_options

    values = read_config_file(args.config) if args.config else {}
    if args.config:
        check_option_names(values, f"config file {args.config}")
    values.update({k: v for k, v in given(args).items() if k != "config"})
    return resolve_options(values)


def run(args) -> int:
    from ..finetune import run_finetune

    options, method = resolve_finetune(args)
    results = run_finetune(options, method)
    if results is None:  # another process than rank 0 of --strategy distributed: rank 0 reports
        return 0
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in results["metrics"].items())
    print(f"{results['task']} {results['method']} seed {results['seed']} ({results['train_size']} examples): "
          f"evaluation set {metrics}; train {results['train_time_s']:.1f} s; run saved in {results['config']['output_dir']}")
    return 0
