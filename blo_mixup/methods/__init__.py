"""Fine-tuning methods behind one interface (base.Method) and one registry (METHODS).

Importing this package imports every module in it; each method module registers its class with
@register, so adding a method is adding a file.
"""

import importlib
import pkgutil

from .base import METHODS, Method, NoOptions, get_method, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
# The core method lives with the rest of the core (blo_mixup/blo/) and registers the same way.
importlib.import_module("blo_mixup.blo.method")

__all__ = ["METHODS", "Method", "NoOptions", "get_method", "register"]
