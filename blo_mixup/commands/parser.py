"""argparse for the commands: a parser whose usage mistakes are one line, and dataclass fields as flags."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..config import RENAMED, flag
from ..errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the fix, like every other bad input."""

    def error(self, message):
        from ..config import HF_NAMES

        # A Hugging Face TrainingArguments flag (--learning_rate, --num-train-epochs): name ours.
        for token in message.split():
            name = token.split("=")[0].lstrip("-").replace("-", "_")
            if token.startswith("--") and name in HF_NAMES:
                raise UserError(f"{token.split('=')[0]} is the Hugging Face TrainingArguments name; here it is "
                                f"{flag(HF_NAMES[name])} (config files accept '{name}' too)")
        raise UserError(f"{message}; see `{self.prog} --help`")


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
        group.add_argument(flag(f.name), help=f"{help_text} (default: {default})", **kwargs)
        for old in (old for old, new in RENAMED.items() if new == f.name):  # the old flag still works, unlisted
            group.add_argument(flag(old), help=argparse.SUPPRESS, **kwargs)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values, without the command's name: keyword arguments for the domain call."""
    return {k: v for k, v in vars(args).items() if k != "command"}
