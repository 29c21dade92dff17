"""Hypergradient methods for Betty, registered under blo_mixup's own names (docs/hypergradients.md).

Betty finds the function that multiplies a vector by the best-response Jacobian at call time, in
``betty.hypergradient.jvp_fn_mapping[lower.config.type]``, and calls it as ``fn(vector, curr, prev, sync)``:
``curr`` is the LOWER problem (its Config holds the method and its options), ``prev`` the upper one,
``vector`` the upper loss's gradient with respect to the lower weights. Each function returns the implicit
part of the upper gradient, aligned with ``prev.trainable_parameters()``; with ``sync`` True it adds that
part to the upper parameters' ``.grad`` itself and returns None, as Betty's own functions do.

    name         computes  -(d2 L_low / d lambda d w) . x   with x =              module
    darts        s v (one scalar per weight tensor, from the lower optimizer's     finite_difference
                 state: the official code's preconditioned DARTS)
    darts-plain  v (the identity as inverse Hessian)                               finite_difference
    sama         P v (P = d(optimizer update)/d(gradient), exact)                  sama
    neumann      alpha sum_k (I - alpha H)^k v (truncated Neumann series)          implicit
    cg           H^-1 v by conjugate gradient (Betty 0.2.1's CG is wrong)          implicit
    nystrom      (H_k + rho I)^-1 v, H_k from `rank` rows of H (Nystrom)            implicit
    direct-only  nothing: no implicit part (a control)                              implicit

The registry (registry.py) holds one record per method; the built-ins are the table below, registered
as a user's method is (``register_hypergradient``). A run carries its method as HypergradientSettings,
built and checked once, which gives the lower problem's Betty Config.
"""

import warnings

import betty.hypergradient

from .finite_difference import darts, darts_plain, darts_preconditioner
from .implicit import cg, conjugate_gradient, direct_only, neumann, neumann_inverse_hvp, nystrom, nystrom_inverse_hvp
from .registry import (Hypergradient, HypergradientConfig, HypergradientSettings, _register, get_hypergradient,
                       hypergradient_config, hypergradient_names, import_hypergradient_module, needs_double_backward,
                       options_of, parse_options, register_hypergradient, unregister_hypergradient)
from .sama import UpdateDerivativeTracker, prepare_sama, sama

# The built-in methods: name, function, options with their defaults, second order, the Betty Config
# fields their options also fill (Betty's own names for them).
BUILTINS = (
    ("darts", darts, {"radius": 0.01}, False, {"radius": "darts_alpha"}),
    ("darts-plain", darts_plain, {"radius": 0.01}, False, {"radius": "darts_alpha"}),
    ("neumann", neumann, {"iterations": 3, "alpha": 0.01}, True, {"iterations": "neumann_iterations", "alpha": "neumann_alpha"}),
    ("cg", cg, {"iterations": 3}, True, {"iterations": "cg_iterations"}),
    ("sama", sama, {"radius": 0.01}, False, {"radius": "sama_adam_alpha"}),
)
for _name, _fn, _options, _second_order, _betty_fields in BUILTINS:
    _register(_name, _fn, options=_options, second_order=_second_order, replace=False, betty_fields=_betty_fields, builtin=True)
del _name, _fn, _options, _second_order, _betty_fields

# Shipped with the package and registered as a user's method is, through the public function: Nystrom
# (Hataya and Yamada, AISTATS 2023), and the control without an implicit part.
register_hypergradient("nystrom", nystrom, options={"rank": 5, "rho": 0.01, "seed": 1}, second_order=True)
register_hypergradient("direct-only", direct_only)

# the names shipped with the package; hypergradient_names() has users' too
HYPERGRADIENTS = tuple(name for name, *_ in BUILTINS) + ("nystrom", "direct-only")


def __getattr__(name):
    """Names kept for one release for older callers (deprecated)."""
    views = {"REGISTERED_NAMES": lambda: {n: get_hypergradient(n).betty_type for n in hypergradient_names()},
             "DEFAULTS": lambda: {n: dict(get_hypergradient(n).options) for n in hypergradient_names()},
             "register": lambda: _register_all}
    if name in views:
        warnings.warn(f"blo_mixup.blo.hypergradients.{name} is deprecated and goes in the next release; use "
                      "get_hypergradient(name) (.betty_type, .options) and hypergradient_names()", DeprecationWarning, stacklevel=2)
        return views[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_all():
    """Put every registered method back into Betty's jvp_fn_mapping (registration already does)."""
    for record in map(get_hypergradient, hypergradient_names()):
        betty.hypergradient.jvp_fn_mapping[record.betty_type] = record.betty_fn


__all__ = [
    "BUILTINS", "HYPERGRADIENTS", "Hypergradient", "HypergradientConfig", "HypergradientSettings", "hypergradient_config",
    "register_hypergradient", "unregister_hypergradient", "hypergradient_names", "get_hypergradient", "options_of",
    "parse_options", "import_hypergradient_module", "needs_double_backward", "prepare_sama", "darts", "darts_plain",
    "darts_preconditioner", "sama", "neumann", "cg", "nystrom", "direct_only", "neumann_inverse_hvp", "conjugate_gradient",
    "nystrom_inverse_hvp", "UpdateDerivativeTracker",
]
