"""blo_mixup: fine-tune pretrained language models on small datasets.

Core: attention-guided weight mixup, W_eff = A*W + (1-A)*W0, with A trained by bi-level optimization
on Betty. Around it: the field's baselines behind one interface and the low-resource GLUE protocol.
"""

__version__ = "0.1.0"

from .api import FitResult, fit  # noqa: E402  (light: the heavy imports are inside fit)
from .errors import UserError  # noqa: E402
from .blo.mixup import MixupConfig, WeightMixup, attach_weight_mixup, is_mixed, merge_weight_mixup  # noqa: E402



def register_hypergradient(name, fn, *, options=None, second_order=False, replace=False, betty_fields=None):
    """Make fn(vector, curr, prev, sync) usable as hypergradient `name` (config files, fit(), the Engine).

    blo_mixup.blo.hypergradients.register_hypergradient, imported on first call so `import blo_mixup` stays
    light; its docstring and docs/hypergradients.md ("Your own hypergradient") describe the arguments.
    """
    from .blo.hypergradients import register_hypergradient as register

    return register(name, fn, options=options, second_order=second_order, replace=replace, betty_fields=betty_fields)


def register_level(name, build, *, above=(), reads=(), stats=None, summary="", replace=False):
    """Declare a Betty node `name` on top of the bi-level mixup: build(ctx, config) -> its Problem; above:
    the levels whose loss uses its parameters; reads: the levels whose parameters its loss uses.

    blo_mixup.blo.levels.register_level, imported on first call; docs/extending.md ("Adding a level")
    and examples/custom_level.py show one end to end.
    """
    from .blo.engine import register_level as register  # the engine registers the built-in levels first

    return register(name, build, above=above, reads=reads, stats=stats, summary=summary, replace=replace)


__all__ = ["FitResult", "MixupConfig", "UserError", "WeightMixup", "attach_weight_mixup", "fit", "is_mixed",
           "merge_weight_mixup", "register_hypergradient", "register_level", "__version__"]
