"""The core method in one place: attention-guided weight mixup trained by bi-level optimization.

- mixup.py: WeightMixup, A*W + (1-A)*W0 on any transformers model (attach, merge)
- hypergradients/: the hypergradient methods (darts, darts-plain, sama, neumann, cg), their registry, your own
- problems.py: the Betty Problem nodes (task weights, attention, data weighting)
- levels.py: each node declared once (how to build it, which levels it touches)
- engine.py: the Betty Engine built from those declarations, phase 1 with checkpoints
- method.py: the `blo-mixup` methods (phase 1, phase 2, presets) behind the Method interface

Public names are importable from here (and the most used ones from `blo_mixup`); they load on first
use, so `import blo_mixup` does not import Betty.
"""

import importlib

_PUBLIC = {
    "mixup": ("MixupConfig", "WeightMixup", "attach_weight_mixup", "is_mixed", "merge_weight_mixup"),
    "hypergradients": ("register_hypergradient", "hypergradient_names", "hypergradient_config", "HypergradientSettings"),
    "problems": ("TaskWeights", "MixupAttention", "DataWeighting", "ExampleWeights"),
    "engine": ("BLOSettings", "build_engine", "run_phase1", "register_level"),
    "levels": ("Level", "LevelContext", "LEVELS"),
    "method": ("BloMixup", "BloMixupOptions"),
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
