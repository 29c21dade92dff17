"""blo_mixup: fine-tune pretrained language models on small datasets.

Core: attention-guided weight mixup, W_eff = A*W + (1-A)*W0, with A trained by bi-level optimization
on Betty. Around it: the field's baselines behind one interface and the low-resource GLUE protocol.
"""

__version__ = "0.1.0"

from .api import FitResult, fit  # noqa: E402  (light: the heavy imports are inside fit)
from .errors import UserError  # noqa: E402
from .mixup import MixupConfig, WeightMixup, attach_weight_mixup, is_mixed, merge_weight_mixup  # noqa: E402

__all__ = ["FitResult", "MixupConfig", "UserError", "WeightMixup", "attach_weight_mixup", "fit", "is_mixed",
           "merge_weight_mixup", "__version__"]
