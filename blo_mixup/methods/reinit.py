"""Re-init + LLRD (Zhang et al., "Revisiting Few-sample BERT Fine-tuning", ICLR 2021; docs/methods.md).

Before training, the pooler and the top `reinit_layers` transformer layers are re-initialised as at
pre-training start (Linear/Embedding weights ~ N(0, initializer_range), biases 0, LayerNorm weight 1
and bias 0): the top layers are the most task-specific to pre-training and transfer worst.
During training, layer-wise learning-rate decay gives layer l (1 = lowest, L = top) the rate
eta * xi^(L - l); the embeddings (l = 0) get eta * xi^L and the task head and pooler the full eta.

The paper's third ingredient, bias-corrected Adam, needs nothing here: torch.optim.AdamW (the shared
loop's optimizer) always corrects the moment estimates' bias; the original BERT optimizer did not.
Its fourth, training longer, is the shared --epochs flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..model_parts import embeddings_of, encoder_layers, is_conv1d, pooler_of
from .base import Method, register


@torch.no_grad()
def reinitialize(module: nn.Module, std: float) -> None:
    """Pre-training-start initialisation: weights ~ N(0, std), biases 0, LayerNorm weight 1 bias 0."""
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm) or type(sub).__name__.endswith("LayerNorm"):
            if getattr(sub, "weight", None) is not None:
                sub.weight.fill_(1.0)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()
        elif isinstance(sub, (nn.Linear, nn.Embedding)) or is_conv1d(sub):
            sub.weight.normal_(0.0, std)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()


@dataclass
class ReinitOptions:
    reinit_layers: int = field(default=2, metadata={"help": "re-initialise this many top transformer layers (0 = none)", "min": 0})
    reinit_pooler: bool = field(default=True, metadata={"help": "re-initialise the pooler too (when the model has one)"})
    llrd_decay: float = field(default=0.9, metadata={"help": "layer-wise lr decay xi: layer l trains at lr * xi^(L - l); 1 = off", "above": 0, "max": 1})


@register
class ReinitLLRD(Method):
    name = "reinit-llrd"
    options_class = ReinitOptions
    summary = "re-initialise the pooler and top layers, layer-wise lr decay (Zhang et al., ICLR 2021)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.reinitialized: list[str] = []

    def prepare_model(self, model, ctx):
        layers = encoder_layers(model)
        if self.options.reinit_layers > len(layers):
            raise UserError(f"--reinit-layers {self.options.reinit_layers} exceeds the model's {len(layers)} layers; "
                            f"pass at most {len(layers)}")
        std = getattr(model.config, "initializer_range", 0.02)
        top = len(layers) - self.options.reinit_layers
        for index in range(top, len(layers)):
            reinitialize(layers[index], std)
            self.reinitialized.append(f"layer {index}")
        pooler = pooler_of(model)
        if self.options.reinit_pooler and pooler is not None:
            reinitialize(pooler, std)
            self.reinitialized.append("pooler")
        return model

    def param_groups(self, model, ctx, lr):
        """One (decay, no-decay) pair of groups per depth, with lr * xi^(L - depth)."""
        from ..training import default_param_groups

        layers = encoder_layers(model)
        num_layers = len(layers)
        depth = {id(p): 0 for p in embeddings_of(model).parameters()}
        for index, layer in enumerate(layers):
            depth.update({id(p): index + 1 for p in layer.parameters()})
        by_depth: dict[int, list] = {}
        for name, param in model.named_parameters():
            # Parameters outside the embeddings and the layers (pooler, head) train at the full rate.
            by_depth.setdefault(depth.get(id(param), num_layers), []).append((name, param))
        groups = []
        for level, named in sorted(by_depth.items()):
            level_lr = lr * self.options.llrd_decay ** (num_layers - level)
            for group in default_param_groups(named, ctx.run.weight_decay, level_lr):
                group["depth"] = level  # recorded for inspection; torch ignores unknown keys
                groups.append(group)
        return groups

    def results(self):
        return {"reinit": {"reinitialized": self.reinitialized}}
