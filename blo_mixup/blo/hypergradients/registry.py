"""The registry of hypergradient methods: one record per method (its function, options, order and the
Betty Config fields its options fill), registration into Betty's ``jvp_fn_mapping`` under a type of its
own, and HypergradientSettings, a method with its checked options as a run uses it."""

import functools
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import betty.hypergradient
from betty.configs import Config

from ...errors import UserError, did_you_mean, unknown_choice


# Config fields hypergradient_config sets itself, and Betty features these functions do not support.
_MANAGED_FIELDS = {
    "type", "unroll_steps", "darts_alpha", "sama_adam_alpha", "neumann_iterations",
    "neumann_alpha", "cg_iterations", "cg_alpha", "hypergradient_options",
}


_UNSUPPORTED_FIELDS = {"darts_multitask", "sama_multitask"}


@dataclass(frozen=True)
class Hypergradient:
    """One hypergradient method: everything the CLI, validation, the docs and hypergradient_config read.

    name: the user name (``--hypergradient NAME``, ``hypergradient=`` in config files and fit()).
    fn: Betty's signature, ``fn(vector, curr, prev, sync)`` (module docstring).
    options: option name -> default. The default's type is the rule: int: a whole number >= 1;
        float: a number > 0; bool: true/false; str: any text.
    second_order: True when fn takes second derivatives (models then load with eager attention).
    betty_fields: option name -> the Betty Config field that also receives its value (the built-ins
        read Betty's own fields, e.g. radius -> darts_alpha); every option is in
        ``curr.config.hypergradient_options`` (``options_of(curr)``) whether mapped or not.
    betty_type: the Config.type under which fn sits in ``betty.hypergradient.jvp_fn_mapping``.
    builtin: one of the five that ship with blo_mixup.
    """

    name: str
    fn: Callable
    options: Mapping[str, Any] = field(default_factory=dict)
    second_order: bool = False
    betty_fields: Mapping[str, str] = field(default_factory=dict)
    betty_type: str = ""
    builtin: bool = False
    betty_fn: Callable | None = None  # what sits in jvp_fn_mapping: fn, or for a user's fn _with_sync(fn)

    def rule(self, option: str) -> str:
        """The option's valid values, in words."""
        return _RULES[type(self.options[option])]


_RULES = {int: "a whole number >= 1", float: "a number > 0", bool: "true or false", str: "any text"}


# name -> record, in registration order (the built-ins first).
_REGISTRY: dict[str, Hypergradient] = {}



_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass
class HypergradientConfig(Config):
    """Betty's Config plus every option of the hypergradient, by its blo_mixup name (``options_of``)."""

    hypergradient_options: dict = field(default_factory=dict)


def register_hypergradient(name, fn, *, options=None, second_order=False, replace=False, betty_fields=None):
    """Make ``fn`` usable by name: ``--hypergradient name``, ``hypergradient: name`` in config files,
    ``blo_mixup.fit(..., hypergradient=name)``, ``BLOSettings(hypergradient=name)`` and
    ``hypergradient_config(name)``.

    fn(vector, curr, prev, sync): Betty's signature. ``vector`` is the upper loss's gradient with respect
        to the lower weights (one tensor per ``curr.meta_trainable_parameters()``), ``curr`` the lower
        problem, ``prev`` the upper one. Return one tensor per ``prev.trainable_parameters()``: the
        implicit part of the upper gradient, -(d2 L_low / d lambda d w) . (H^-1 v or its estimate).
        ``sync`` may be ignored: when Betty asks for it, blo_mixup adds the returned tensors to the
        upper parameters' ``.grad`` (``prev.set_grads``) itself.
    options: option name -> default (int: whole number >= 1; float: number > 0; bool; str). Users set
        them with ``hypergradient_options`` ({"scale": 2.0} in config files and fit(),
        ``--hypergradient-options scale=2.0`` on the command line); fn reads them with
        ``options_of(curr)``.
    second_order: True if fn differentiates twice (then transformers models load with eager attention).
    replace: re-register a name that is taken (otherwise a UserError).
    betty_fields: option name -> Betty Config field that also receives the value (to reuse a Betty function).
    Returns the record (Hypergradient).
    """
    return _register(name, fn, options=options, second_order=second_order, replace=replace,
                     betty_fields=betty_fields, builtin=False)


def _register(name, fn, *, options, second_order, replace, betty_fields, builtin):
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"hypergradient name {name!r}: use lower-case letters, digits, '-' and '_', starting "
                        "with a letter (e.g. 'scaled-identity')")
    if name in _REGISTRY and not replace:
        raise UserError(f"hypergradient '{name}' is already registered; pick another name or pass replace=True")
    if not callable(fn):
        raise UserError(f"hypergradient '{name}': fn must be a function fn(vector, curr, prev, sync), not {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(None, None, None, None)
    except TypeError:
        raise UserError(f"hypergradient '{name}': fn must take four arguments (vector, curr, prev, sync), "
                        "as Betty calls it") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): trust it
    if not isinstance(second_order, bool):
        raise UserError(f"hypergradient '{name}': second_order must be True or False, not {second_order!r}")
    options = dict(options or {})
    for option, default in options.items():
        if not isinstance(option, str) or not option.isidentifier():
            raise UserError(f"hypergradient '{name}': option name {option!r} must be a Python identifier")
        if type(default) not in _RULES:
            raise UserError(f"hypergradient '{name}': option '{option}' has default {default!r}; defaults must "
                            "be int, float, bool or str (the type is the option's rule)")
        _check_value(name, option, default, default)
    betty_fields = dict(betty_fields or {})
    config_fields = {f.name for f in fields(Config)}
    for option, betty_field in betty_fields.items():
        if option not in options:
            raise UserError(f"hypergradient '{name}': betty_fields names '{option}', which is not one of its options")
        if betty_field not in config_fields or betty_field in ("type", "unroll_steps"):
            raise UserError(f"hypergradient '{name}': '{betty_field}' is not a Betty Config field it may set"
                            f"{did_you_mean(betty_field, config_fields)}")
    betty_type = "blo_" + name.replace("-", "_")
    clash = [other.name for other in _REGISTRY.values() if other.betty_type == betty_type and other.name != name]
    if clash:
        raise UserError(f"hypergradient '{name}' would sit in Betty under '{betty_type}', as '{clash[0]}' does; "
                        "pick another name")
    record = Hypergradient(name=name, fn=fn, options=options, second_order=second_order,
                           betty_fields=betty_fields, betty_type=betty_type, builtin=builtin,
                           betty_fn=fn if builtin else _with_sync(fn))
    _REGISTRY[name] = record
    betty.hypergradient.jvp_fn_mapping[betty_type] = record.betty_fn
    return record


def _with_sync(fn):
    """A user's fn as Betty needs it: when Betty asks for sync (it does at every upper step's last
    path) and fn returned its tensors, add them to the upper parameters' .grad and return None, as
    Betty's own functions do (Betty drops a value returned under sync)."""

    @functools.wraps(fn)
    def call(vector, curr, prev, sync):
        grads = fn(vector, curr, prev, sync)
        if sync and grads is not None:
            prev.set_grads(prev.trainable_parameters(), list(grads))
            return None
        return grads

    return call


def unregister_hypergradient(name):
    """Remove a user-registered hypergradient (the built-in ones stay)."""
    record = get_hypergradient(name)
    if record.builtin:
        raise UserError(f"'{record.name}' is built in and cannot be unregistered; register_hypergradient("
                        f"'{record.name}', fn, replace=True) replaces it")
    del _REGISTRY[record.name]
    betty.hypergradient.jvp_fn_mapping.pop(record.betty_type, None)


def hypergradient_names():
    """Every registered name: the built-in ones, then the users', in registration order."""
    return tuple(_REGISTRY)


def get_hypergradient(name):
    """The record of ``name`` (case-insensitive; a registered Betty type such as 'blo_cg' works too)."""
    key = str(name).strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    for record in _REGISTRY.values():
        if key == record.betty_type:
            return record
    error = unknown_choice("hypergradient", name, list(_REGISTRY))
    raise UserError(f"{error}; your own: blo_mixup.register_hypergradient (docs/hypergradients.md, "
                    "'Your own hypergradient')")


def options_of(curr):
    """The hypergradient options of lower problem ``curr`` ({name: value}, defaults filled in).

    A Config built by hypergradient_config carries them; a plain Betty Config gets the defaults of
    the hypergradient registered under its type.
    """
    config = curr.config if hasattr(curr, "config") else curr
    options = getattr(config, "hypergradient_options", None)
    if options is None:
        return dict(get_hypergradient(config.type).options)
    return dict(options)


def needs_double_backward(name):
    """True for methods that take second derivatives (neumann, cg, and users' with second_order=True).

    Their models must support double backward: load transformers models with
    ``attn_implementation="eager"`` (the fused attention kernels have no double backward on CPU).
    """
    return get_hypergradient(name).second_order


def _positive_int(value, option, method):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give a whole number >= 1")
    return value


def _positive_float(value, option, method):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give a number > 0")
    return float(value)


def _check_value(method, option, value, default):
    """``value`` checked (and converted from text, as a flag or config file gives it) by ``default``'s type."""
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give "
                            f"{_RULES[kind]}") from None
    if kind is int:
        return _positive_int(value, option, method)
    if kind is float:
        return _positive_float(value, option, method)
    if not isinstance(value, kind):
        raise UserError(f"{option}={value!r} for the '{method}' hypergradient; give {_RULES[kind]}")
    return value


def parse_options(options):
    """``hypergradient_options`` as a dict: a dict as is, text "key=value,key=value" (the flag) split."""
    if options is None or options == "":
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    if not isinstance(options, str):
        raise UserError(f"hypergradient_options={options!r}; give a dict, or text 'name=value,name=value'")
    parsed = {}
    for item in options.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"hypergradient_options '{options}': '{item}' is not name=value; "
                            "write e.g. --hypergradient-options scale=2.0,steps=3")
        parsed[key.strip()] = value.strip()
    return parsed


@dataclass(frozen=True)
class HypergradientSettings:
    """The upper level's hypergradient as a run uses it, built and checked once: the registered method,
    every one of its options (defaults filled in) and the lower steps per upper step. It is carried whole
    from the options to the engine and to bench, and gives the lower problem's Betty Config."""

    method: Hypergradient
    options: Mapping[str, Any] = field(default_factory=dict)
    unroll_steps: int = 1

    def __repr__(self) -> str:
        return f"HypergradientSettings({self.name!r}, options={dict(self.options)}, unroll_steps={self.unroll_steps})"

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def second_order(self) -> bool:
        """True when the method differentiates twice (the model then needs eager attention)."""
        return self.method.second_order

    @classmethod
    def build(cls, name, *, iterations=None, alpha=None, radius=None, options=None, unroll_steps=1) -> "HypergradientSettings":
        """name: a registered name (case-insensitive). iterations, alpha, radius: shorthands for the options
        of those names (the built-ins' --hypergradient-iterations/-alpha/-radius). options: any of the
        method's options (a dict, or text "name=value,..."). An option the method does not take, a bad
        value or a bad unroll_steps is a UserError."""
        record = get_hypergradient(name)
        method = record.name
        given = {k: v for k, v in (("iterations", iterations), ("alpha", alpha), ("radius", radius)) if v is not None}
        for option, value in parse_options(options).items():
            if option in given:
                raise UserError(f"option '{option}' of the '{method}' hypergradient is given twice (as "
                                f"hypergradient_{option} and in hypergradient_options); give it once")
            given[option] = value
        for option, value in given.items():
            if option in record.options:
                continue
            if record.builtin and option in _WHY_NOT:
                why = _WHY_NOT[option]
            else:
                names = ", ".join(record.options) or "none"
                why = f"its options are: {names}{did_you_mean(option, list(record.options))}"
            raise UserError(f"{option}={value!r} does not apply to the '{method}' hypergradient: {why}; leave {option} unset")
        checked = {option: _check_value(method, option, given.get(option, default), default)
                   for option, default in record.options.items()}
        return cls(record, checked, _positive_int(unroll_steps, "unroll_steps", method))

    def betty_config(self, **betty_kwargs) -> "HypergradientConfig":
        """The LOWER problem's Betty Config (Betty reads the hypergradient there): the method's type, its
        options (also in the Betty fields the method maps them to), unroll_steps, and betty_kwargs, other
        Config fields (gradient_clipping, precision, log_step, ...); a field this object sets, or one
        Betty does not have, is a UserError."""
        managed = _MANAGED_FIELDS | set(self.method.betty_fields.values())
        config_fields = {f.name for f in fields(Config)}
        for key in betty_kwargs:
            if key in managed:
                raise UserError(f"Config field '{key}' is set from the hypergradient's options (iterations=, alpha=, "
                                "radius=, options=) and unroll_steps; give it there")
            if key in _UNSUPPORTED_FIELDS:
                raise UserError(f"Config field '{key}' is not supported by blo_mixup's hypergradients "
                                "(they always restore the lower weights); leave it unset")
            if key not in config_fields:
                choices = sorted(config_fields - managed - _UNSUPPORTED_FIELDS)
                raise UserError(f"unknown Betty Config field '{key}'{did_you_mean(key, choices)}; "
                                f"choose from: {', '.join(choices)}")
        mapped = {betty_field: self.options[option] for option, betty_field in self.method.betty_fields.items()}
        return HypergradientConfig(type=self.method.betty_type, unroll_steps=self.unroll_steps,
                                   hypergradient_options=dict(self.options), **mapped, **betty_kwargs)


def hypergradient_config(name, *, iterations=None, alpha=None, radius=None, options=None, unroll_steps=1,
                         **betty_kwargs):
    """The LOWER problem's Betty Config for hypergradient method ``name``: HypergradientSettings.build
    with these arguments, then its betty_config(**betty_kwargs).

    name: a registered name (built in: "darts" | "darts-plain" | "neumann" | "cg" | "sama"; case-insensitive).
    iterations: neumann, cg: Hessian-vector products per hypergradient (default 3).
    alpha: neumann only: series step, needs 0 < alpha * eig(H) < 2 (default 0.01). radius: darts,
    darts-plain, sama: norm of the finite-difference probe in weight space (default 0.01). options: any
    of the method's options by name. unroll_steps: lower steps per upper step (default 1).
    """
    settings = HypergradientSettings.build(name, iterations=iterations, alpha=alpha, radius=radius, options=options,
                                           unroll_steps=unroll_steps)
    return settings.betty_config(**betty_kwargs)


_WHY_NOT = {
    "iterations": "it has no iterations (only neumann and cg do)",
    "alpha": "it has no step size (only neumann does; CG needs none)",
    "radius": "it has no finite-difference radius (only darts, darts-plain and sama do)",
}


def import_hypergradient_module(spec, option: str = "hypergradient_module"):
    """Import a module (dotted name) or a Python file that registers hypergradients (or levels, with
    option="level_module"); once per process."""
    spec = str(spec).strip()
    if spec in _IMPORTED:
        return _IMPORTED[spec]
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{option} '{spec}': no such file; give a .py file or an importable module")
        module_name = "blo_mixup_user_" + re.sub(r"\W", "_", path.stem)
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as error:
            if error.name is None or not spec.startswith(error.name):
                raise
            raise UserError(f"{option} '{spec}': no module named '{error.name}'; give a .py file "
                            "or a module on the Python path") from None
    _IMPORTED[spec] = module
    return module


_IMPORTED = {}
