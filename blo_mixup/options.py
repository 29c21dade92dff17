"""Option values (flags, a config file, fit()'s keywords) become a run: (config.RunConfig, a Method
instance). Plain values in, no argparse, so the commands (blo_mixup/commands/), compare and
blo_mixup.fit share it without importing each other.
"""

from __future__ import annotations

from typing import Any

from .config import flag
from .errors import UserError


def check_option_names(names, where: str, hint: str | None = None) -> None:
    """Reject a name that is no option of any method (RunConfig's fields and every method's options
    dataclass), with the closest valid name."""
    from .config import HF_NAMES, RENAMED, RunConfig, check_known_keys, field_names
    from .methods import METHODS

    names = [HF_NAMES.get(name) or RENAMED.get(name) or name for name in names]  # TrainingArguments and old names are accepted
    all_option_keys = sorted({k for cls in METHODS.values() for k in field_names(cls.options_class)})
    check_known_keys(names, field_names(RunConfig) + all_option_keys, where, hint)


def resolve_options(values: dict[str, Any], python: bool = False):
    """(RunConfig, Method instance) from option values (names with underscores, as the dataclass fields):
    the one place where `finetune`'s flags and config file, and blo_mixup.fit's keyword arguments, become a
    run. An option of another method than the chosen one is refused, naming its method. python: name
    options as Python keywords (lr=...) in messages instead of flags (--lr)."""
    from .config import RunConfig, build_dataclass, field_names, translate_names, with_train_size
    from .methods import METHODS, get_method

    values = translate_names(values, "the options")
    method_name = values.get("method", RunConfig.method)
    method_cls = get_method(method_name)
    run_keys, method_keys = field_names(RunConfig), field_names(method_cls.options_class)
    for key in values:
        if key not in run_keys and key not in method_keys:
            owners = [n for n, cls in METHODS.items() if key in field_names(cls.options_class)]
            option, switch = (f"'{key}'", f"method='{owners[0]}'") if python else (flag(key), f"--method {owners[0]}")
            raise UserError(f"option {option} belongs to method {', '.join(owners)}, not '{method_name}'; drop it or pass {switch}")
    run = with_train_size(build_dataclass(RunConfig, {k: v for k, v in values.items() if k in run_keys}, "the run options"))
    options = build_dataclass(method_cls.options_class, {k: v for k, v in values.items() if k in method_keys}, f"the {method_name} options")
    return run, method_cls(options, run)
