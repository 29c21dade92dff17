"""Where the parts of a transformers model are: the base model, its stack of transformer layers and their
Linear layers, the pooler, the embeddings, the dropout modules. One version of each, for the methods
that change or select parts of the model (methods/*.py); models.py loads models."""

from __future__ import annotations

from torch import nn

from .errors import UserError

# Where BERT-like models keep their stack of transformer layers, relative to the base model.
LAYER_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer", "h")
# The config's dropout rates, set with the modules' so that the saved model keeps them.
DROPOUT_CONFIG_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def base_model(model: nn.Module) -> nn.Module:
    """The pretrained encoder without the task head (model.bert for BERT), or the model itself.
    As transformers' own `base_model`, and also for a module that only declares base_model_prefix."""
    return getattr(model, getattr(model, "base_model_prefix", ""), model)


def _get_path(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's transformer layers, lowest first (BERT, RoBERTa, ELECTRA, DeBERTa, DistilBERT, GPT-2)."""
    base = base_model(model)
    for path in LAYER_PATHS:
        layers = _get_path(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise UserError(
        f"cannot find the transformer layers of {type(model).__name__} (looked for base_model."
        f"{', '.join(LAYER_PATHS)}); use a BERT-like model (BERT, RoBERTa, ELECTRA, DeBERTa, DistilBERT) with this method"
    )


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a Linear layer whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D"


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear layers inside the transformer layers, by name, in model order.

    For BERT these are the six Linear layers of each layer (query, key, value, attention output,
    intermediate, output); embeddings, pooler and classifier are outside the layers.
    """
    inside = {id(m) for m in encoder_layers(model).modules()}
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) in inside}


def pooler_of(model: nn.Module):
    """The pretrained pooler (BERT-style models), or None when the model has none."""
    return getattr(base_model(model), "pooler", None)


def embeddings_of(model: nn.Module) -> nn.Module:
    """The embedding block (word, position, type embeddings and their LayerNorm), or the input embeddings."""
    embeddings = getattr(base_model(model), "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else model.get_input_embeddings()


def dropout_modules(module: nn.Module) -> list[nn.Dropout]:
    """Every nn.Dropout inside `module`, in module order."""
    return [m for m in module.modules() if isinstance(m, nn.Dropout)]


def set_dropout(module: nn.Module, p: float, config_keys: tuple[str, ...] = ()) -> None:
    """Set every dropout module inside `module` to rate p, and the rates its config names in config_keys
    (e.g. DROPOUT_CONFIG_KEYS), which the saved model keeps."""
    for dropout in dropout_modules(module):
        dropout.p = p
    config = getattr(module, "config", None)
    for key in config_keys:
        if hasattr(config, key):
            setattr(config, key, p)
