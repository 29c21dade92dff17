"""Option ranges and choices come from the dataclass fields' metadata ("min", "max", "above", "below",
"choices"; config.check_option_values): every such field of RunConfig, bench's options and every
registered method's options is refused out of range with one line naming its flag, from option values
(flags, config files, fit()) and from a dataclass built in Python, and a value at its bound passes."""

import dataclasses

import pytest

from blo_mixup.bench import BenchOptions
from blo_mixup.config import RANGE_KEYS, RunConfig, check_option_values, range_words
from blo_mixup.errors import UserError
from blo_mixup.methods import METHODS, get_method
from blo_mixup.options import resolve_options


def owner_method(cls) -> str | None:
    """A registered method whose options class is `cls` (None for RunConfig and bench's options)."""
    return next((name for name, method in METHODS.items() if method.options_class is cls), None)


CLASSES = list(dict.fromkeys([RunConfig, BenchOptions, *(m.options_class for m in METHODS.values())]))
CHECKED = [(cls, f) for cls in CLASSES for f in dataclasses.fields(cls)
           if "choices" in f.metadata or any(key in f.metadata for key in RANGE_KEYS)]


def is_int(field) -> bool:
    return str(field.type).startswith("int")


def bad_values(field) -> list:
    """Values just outside the field's declared range or choices."""
    meta = field.metadata
    if "choices" in meta:
        choices = meta["choices"]
        return [max(choices) + 1] if all(isinstance(c, int) for c in choices) else ["not-a-choice"]
    values = []
    if "min" in meta:
        values.append(meta["min"] - 1)
    if "above" in meta:
        values.append(meta["above"])
    if "max" in meta:
        values.append(meta["max"] + 1)
    if "below" in meta:
        values.append(meta["below"])
    return values


def good_values(field) -> list:
    """The field's bounds, or the nearest allowed values to an exclusive bound; every choice."""
    meta = field.metadata
    if "choices" in meta:
        return list(meta["choices"])
    step = 1 if is_int(field) else 1e-6
    values = [meta[key] for key in ("min", "max") if key in meta]
    values += [meta["above"] + step] if "above" in meta else []
    values += [meta["below"] - step] if "below" in meta else []
    return values


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_there_is_something_to_check():
    names = {f.name for _, f in CHECKED}
    assert {"lr", "split_ratio", "levels", "mixout_p", "dps_p", "ftft_fraction", "pac_stage1_fraction",
            "gd_mlm_probability", "llrd_decay", "problem_type", "strategy"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_defaults_are_in_their_own_ranges(cls):
    check_option_values(cls())  # None (an unset optional) passes too: lr, phase1_epochs, ...


@pytest.mark.parametrize("cls, field", CHECKED, ids=lambda x: getattr(x, "__name__", getattr(x, "name", "")))
def test_out_of_range_is_one_line_naming_the_flag(cls, field):
    method = owner_method(cls)
    for value in bad_values(field):
        # built in Python
        with pytest.raises(UserError) as error:
            check_option_values(cls(**{field.name: value}))
        message = str(error.value)
        assert message.startswith(f"{flag(field.name)} must be "), message
        assert "\n" not in message and (f"got {value!r}" in message or f"got {value}" in message), message
        if cls is BenchOptions:
            continue
        # from option values: flags, config files and fit() keywords all come through resolve_options
        values = {"task": "rte", field.name: value, **({"method": method} if method else {})}
        with pytest.raises(UserError, match=f"^{flag(field.name)} must be "):
            resolve_options(values)
        if method:  # a method built in Python with hand-made options
            with pytest.raises(UserError, match=f"^{flag(field.name)} must be "):
                get_method(method)(cls(**{field.name: value}))


@pytest.mark.parametrize("cls, field", CHECKED, ids=lambda x: getattr(x, "__name__", getattr(x, "name", "")))
def test_a_value_at_the_bound_passes(cls, field):
    for value in good_values(field):
        check_option_values(cls(**{field.name: value}))


@pytest.mark.parametrize("metadata, words", [
    ({"above": 0}, "positive"),
    ({"min": 0}, "zero or more"),
    ({"min": 2}, "at least 2"),
    ({"above": 0, "below": 1}, "strictly between 0 and 1"),
    ({"min": 0, "below": 1}, "in [0, 1)"),
    ({"above": 0, "max": 1}, "in (0, 1]"),
    ({"min": 0, "max": 1}, "in [0, 1]"),
])
def test_range_words(metadata, words):
    assert range_words(metadata) == words


def test_messages_keep_their_wording():
    cases = [({"split_ratio": 1.5}, "--split-ratio must be strictly between 0 and 1; got 1.5"),
             ({"levels": 4}, "--levels must be one of: 2, 3; got 4"),
             ({"mixup_form": "papr"}, "--mixup-form must be one of: convex, paper; got 'papr' (did you mean 'paper'?)")]
    for options, message in cases:
        with pytest.raises(UserError) as error:
            resolve_options({"task": "rte", "method": "blo-mixup", **options})
        assert str(error.value) == message
    with pytest.raises(UserError, match=r"^--lr must be positive; got -1.0$"):
        resolve_options({"task": "rte", "lr": -1})
    with pytest.raises(UserError, match=r"^--warmup-ratio must be in \[0, 1\); got 1.0$"):
        resolve_options({"task": "rte", "warmup_ratio": 1})


def test_nan_is_in_no_range():
    with pytest.raises(UserError, match="--epochs must be positive; got nan"):
        check_option_values(RunConfig(epochs=float("nan")))


def test_a_run_config_built_in_python_is_checked_by_finetune():
    from blo_mixup.config import validate_run_config

    with pytest.raises(UserError, match="^--batch-size must be positive; got 0$"):
        validate_run_config(RunConfig(task="rte", batch_size=0))
