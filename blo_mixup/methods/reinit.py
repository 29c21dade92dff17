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
from .base import Method, register

# Where BERT-like models keep their stack of transformer layers, relative to model.base_model.
LAYER_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer", "h")


def _get_path(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's transformer layers, lowest first (BERT, RoBERTa, ELECTRA, DeBERTa, DistilBERT, GPT-2)."""
    base = getattr(model, "base_model", model)
    for path in LAYER_PATHS:
        layers = _get_path(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise UserError(
        f"cannot find the transformer layers of {type(model).__name__} (looked for base_model."
        f"{', '.join(LAYER_PATHS)}); use a BERT-like model (BERT, RoBERTa, ELECTRA, DeBERTa, DistilBERT) with this method"
    )


def pooler_of(model: nn.Module):
    """The pretrained pooler (BERT-style models), or None when the model has none."""
    return getattr(getattr(model, "base_model", model), "pooler", None)


def embeddings_of(model: nn.Module) -> nn.Module:
    """The embedding block (word, position, type embeddings and their LayerNorm), or the input embeddings."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else model.get_input_embeddings()


@torch.no_grad()
def reinitialize(module: nn.Module, std: float) -> None:
    """Pre-training-start initialisation: weights ~ N(0, std), biases 0, LayerNorm weight 1 bias 0."""
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm) or type(sub).__name__.endswith("LayerNorm"):
            if getattr(sub, "weight", None) is not None:
                sub.weight.fill_(1.0)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()
        elif isinstance(sub, (nn.Linear, nn.Embedding)) or type(sub).__name__ == "Conv1D":
            sub.weight.normal_(0.0, std)
            if getattr(sub, "bias", None) is not None:
                sub.bias.zero_()


@dataclass
class ReinitOptions:
    reinit_layers: int = field(default=2, metadata={"help": "re-initialise this many top transformer layers (0 = none)"})
    reinit_pooler: bool = field(default=True, metadata={"help": "re-initialise the pooler too (when the model has one)"})
    llrd_decay: float = field(default=0.9, metadata={"help": "layer-wise lr decay xi: layer l trains at lr * xi^(L - l); 1 = off"})


@register
class ReinitLLRD(Method):
    name = "reinit-llrd"
    options_class = ReinitOptions
    summary = "re-initialise the pooler and top layers, layer-wise lr decay (Zhang et al., ICLR 2021)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        o = self.options
        if o.reinit_layers < 0:
            raise UserError(f"--reinit-layers must be zero or more; got {o.reinit_layers}")
        if not 0 < o.llrd_decay <= 1:
            raise UserError(f"--llrd-decay must be in (0, 1] (1 turns the decay off); got {o.llrd_decay}")
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
