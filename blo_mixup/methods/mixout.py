"""Mixout (Lee, Cho, Kang, ICLR 2020, arXiv 1909.11299; docs/methods.md).

Dropout sets a dropped unit's weights to zero; mixout sets them to the pretrained weights W0 instead:

    W_mix = [M * W + (1 - M) * W0 - p * W0] / (1 - p)  =  W0 + M * (W - W0) / (1 - p)

with M ~ Bernoulli(1 - p) drawn per input column at every forward pass in training mode, so that
E[W_mix] = W. In evaluation W_mix = W. It regularises W towards W0 (the paper shows it acts like an
L2 penalty ||W - W0||^2 whose strength grows with p / (1 - p)).

Targets: every Linear/Conv1D of the pretrained layer stack and the pooler (the core method's default
targets, mixup.target_module_names); the new classifier head has no pretrained weights to mix
towards and is left alone. As in the official code, mixout replaces dropout: the dropout modules
inside the pretrained backbone are set to 0; the head's dropout keeps its rate. The transform is a
torch.nn.utils.parametrize parametrization of `weight`, removed again in finalize_model (eval uses W,
so removing it changes nothing), which leaves a plain transformers model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError
from ..model_parts import base_model, is_conv1d, set_dropout
from .base import Method, register


class MixoutWeight(nn.Module):
    """Parametrization W -> W_mix towards the frozen pretrained weight W0 (a buffer).

    transposed: the weight is stored (in, out) (transformers' Conv1D), so input columns are rows.
    """

    def __init__(self, pretrained: torch.Tensor, p: float, transposed: bool = False):
        super().__init__()
        self.register_buffer("w0", pretrained.detach().clone())
        self.p = p
        self.transposed = transposed

    def forward(self, weight):
        if not self.training or self.p == 0:
            return weight
        in_dim = 0 if self.transposed else 1
        shape = [1, 1]
        shape[in_dim] = weight.shape[in_dim]
        keep = torch.empty(shape, device=weight.device, dtype=weight.dtype).bernoulli_(1 - self.p)  # M, per input column
        return mixout(weight, self.w0, keep, self.p)


def mixout(weight, target, mask, p: float):
    """(M*W + (1-M)*U - p*U) / (1-p), computed as U + M*(W - U)/(1-p); M broadcasts over the weight."""
    return target + mask * (weight - target) / (1 - p)


def mixout_targets(model: nn.Module) -> list[str]:
    """Names of the modules whose weight mixout mixes: the layer stack's and the pooler's Linear layers."""
    from ..blo.mixup import target_module_names

    return target_module_names(model)


@dataclass
class MixoutOptions:
    mixout_p: float = field(default=0.7, metadata={"help": "mixout probability p: chance that a weight column is replaced by its pretrained value (0 <= p < 1)", "min": 0, "below": 1})


@register
class Mixout(Method):
    name = "mixout"
    options_class = MixoutOptions
    summary = "mixout: stochastically swap weight columns for their pretrained values (Lee et al., ICLR 2020)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.targets: list[str] = []

    def prepare_model(self, model, ctx=None):
        self.targets = mixout_targets(model)
        if not self.targets:
            raise UserError(f"mixout found no Linear layers to mix in {type(model).__name__}; use a transformer "
                            "model whose layers are nn.Linear or Conv1D")
        for name in self.targets:
            module = model.get_submodule(name)
            transposed = is_conv1d(module)
            parametrize.register_parametrization(module, "weight", MixoutWeight(module.weight, self.options.mixout_p, transposed))
        # Mixout replaces dropout in the pretrained part; the new head keeps its dropout.
        set_dropout(base_model(model), 0.0)
        return model

    def finalize_model(self, model):
        """Remove the parametrizations, keeping the trained W (what evaluation uses)."""
        for name in self.targets:
            module = model.get_submodule(name)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        return model

    def results(self):
        return {"mixout": {"mixed_layers": len(self.targets)}}
