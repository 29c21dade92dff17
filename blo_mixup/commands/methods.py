"""`blo-mixup methods`: the fine-tuning methods and their options."""

from __future__ import annotations

import dataclasses

from ..config import flag

NAME = "methods"


def add_parser(sub) -> None:
    sub.add_parser(NAME, help="list the fine-tuning methods and their options")


def run(args) -> int:
    from ..methods import METHODS

    for name, cls in sorted(METHODS.items()):
        print(f"{name}: {cls.summary}")
        for f in dataclasses.fields(cls.options_class):
            print(f"    {flag(f.name)} (default {f.default}): {f.metadata.get('help', '')}")
    print("\nIn `blo-mixup compare --methods`, METHOD+OPTION=VALUE is a variant with options of its own, a row of "
          "its own: e.g. blo-mixup+unroll-steps=5 (docs/cli.md)")
    return 0
