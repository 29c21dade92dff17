"""Fine-tuning methods behind one interface (base.Method) and one registry (METHODS).

Importing this package imports every method module, each of which registers itself.
"""

from .base import METHODS, Method, NoOptions, get_method, register
from . import blo, vanilla  # noqa: E402,F401

__all__ = ["METHODS", "Method", "NoOptions", "get_method", "register"]
