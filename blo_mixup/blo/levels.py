"""The levels of the Betty graph, each declared in one place (docs/extending.md, "Adding a level").

A level is one Betty Problem node plus its place in the graph:

    above  the levels whose LOSS uses this level's parameters (Betty's u2l edges, this -> each)
    reads  the levels whose trained PARAMETERS this level's loss uses (Betty's l2u edges, each -> this)

engine.build_engine builds the nodes in order (weights, attention, then the added ones), gives each its
Betty Config from its place (a level that another level reads is a lower problem and carries a
hypergradient: the --hypergradient for "weights", darts-plain for the others; a level nobody reads gets
engine.upper_config()), and hands Betty the u2l / l2u dicts made from these declarations.

A level whose parameters change a lower level's loss (as per-example weights do) says how with a method
on its Problem, ``shape_lower_loss(lower, batch, losses, loss) -> loss`` (losses: per example; loss: the
value so far); the lower node calls it for every level above it that has one (problems.BloProblem).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError, unknown_choice

CORE = ("weights", "attention")  # always there: W (lower) and A (upper)


@dataclass
class LevelContext:
    """What a level's build function gets: the run's pieces and its settings."""

    model: Any  # the mixed model (its parameters are the task weights W)
    mixup: Any  # the WeightMixup (its parameters are the attention A)
    settings: Any  # engine.BLOSettings
    loaders: dict  # "d1" (lower data), "d2" (upper data), "top" (for added levels; default: D2's)
    train_iters: int  # lower steps of phase 1
    upper_steps: int  # steps of each upper level (train_iters // unroll_steps)
    device: str
    d1_ids: list | None = None  # the dataset ids ('idx') of the D1 examples, in row order
    options: dict = field(default_factory=dict)  # --level-options, as {name: text or value}


@dataclass(frozen=True)
class Level:
    """One node: `build(ctx, config)` returns its Betty Problem (named `name`); `stats(problem)` (optional)
    returns what phase 1 reports about it in results.json."""

    name: str
    build: Callable[[LevelContext, Any], Any]
    above: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    stats: Callable[[Any], dict] | None = None
    summary: str = ""


LEVELS: dict[str, Level] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a Python identifier: Betty sets problems as attributes


def register_level(name: str, build, *, above=(), reads=(), stats=None, summary: str = "", replace: bool = False) -> Level:
    """Declare a level: usable by name with --add-levels, `add_levels:` in config files, fit() and BLOSettings.

    build(ctx: LevelContext, config: betty Config) -> the Problem, named `name`; above / reads: the
    levels it touches (see the module docstring); stats(problem) -> dict for results.json (optional).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"level name {name!r}: use lower-case letters, digits and '_', starting with a letter "
                        "(it becomes the Betty problem's attribute name)")
    if name in LEVELS and not replace:
        raise UserError(f"a level named '{name}' is already registered; pick another name or pass replace=True")
    if not callable(build):
        raise UserError(f"level '{name}': build must be a function (ctx, config) -> a Betty Problem")
    above, reads = tuple(above), tuple(reads)
    if not above and not reads and name not in CORE:
        raise UserError(f"level '{name}' touches no other level; give `above` (levels whose loss uses its "
                        "parameters) and/or `reads` (levels whose parameters its loss uses)")
    level = Level(name, build, above, reads, stats, summary)
    LEVELS[name] = level
    return level


def unregister_level(name: str) -> None:
    if name in CORE or name not in LEVELS:
        raise UserError(f"'{name}' is not a registered added level")
    del LEVELS[name]


def level_names(text) -> tuple[str, ...]:
    """--add-levels as a tuple of names ("data,mine" or a list)."""
    if text is None or text == "":
        return ()
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    return tuple(n for n in names if n)


def graph_levels(added) -> list[Level]:
    """The core levels and the added ones, checked: known names, no repeats, every edge to a level present."""
    names = list(CORE)
    for name in added:
        if name in CORE or name not in LEVELS:
            choices = [n for n in LEVELS if n not in CORE]
            if not choices:
                raise UserError(f"unknown level '{name}'; none is registered: register yours with "
                                "blo_mixup.register_level and import its file with --level-module (docs/extending.md)")
            raise unknown_choice("level", name, choices)
        if name in names:
            raise UserError(f"level '{name}' is added twice; name each level once in --add-levels")
        names.append(name)
    levels = [LEVELS[n] for n in names]
    for level in levels:
        for other in (*level.above, *level.reads):
            if other not in names:
                raise UserError(f"level '{level.name}' needs level '{other}', which is not in the graph; "
                                f"add it with --add-levels {','.join([*added, other])}")
    return levels


def dependencies(levels, problems: dict) -> tuple[dict, dict]:
    """Betty's (u2l, l2u) from the declarations; problems: {name: Problem}."""
    u2l, l2u = {}, {}
    for level in levels:
        if level.above:
            u2l[problems[level.name]] = [problems[n] for n in level.above]
        for lower in level.reads:
            l2u.setdefault(problems[lower], []).append(problems[level.name])
    return u2l, l2u


def readers(levels) -> dict[str, list[str]]:
    """{name: the levels that read it}: a level with readers is a lower problem (it carries a hypergradient)."""
    read_by = {level.name: [] for level in levels}
    for level in levels:
        for lower in level.reads:
            read_by[lower].append(level.name)
    return read_by
