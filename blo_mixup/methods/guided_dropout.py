"""Guided dropout (Sharma et al., 2024, arXiv 2406.14005): per-site dropout rates from the Fisher information.

Computed once per model and corpus, before fine-tuning (docs/methods.md):
1. the empirical Fisher of the masked-LM loss, F_i = mean over examples of (dL_mlm/dtheta_i)^2, one
   example per backward pass;
2. each dropout site of the encoder is scored by the mean Fisher of the parameters that feed it:
   embedding dropout <- the embedding tensors; attention-probs dropout <- Q, K, V; attention-output
   dropout <- that dense + LayerNorm; FFN-output dropout <- that dense + LayerNorm;
3. sites sorted by score get rates linearly from p_upper (lowest score) to p_lower (highest score);
   the classifier's dropout keeps its own rate (0.1).
Fine-tuning is then plain fine-tuning: no extra cost per step.

Deviation: the paper's Fisher corpus is general text (about 1% of the pretraining data); offline, this
module uses the task's own training text without labels (the run's subsample by default, or the whole
train split). Checkpoints without MLM head weights (e.g. the sentence-transformers MiniLM) get BERT's
head with the decoder tied to the pretrained embeddings and a freshly initialised (seeded) transform,
or, with --gd-fisher-head task, the Fisher of the task loss; docs/methods.md says more.

Sites are found and set by module name, never by position. The attention-probs site is the
nn.Dropout held by the self-attention module: transformers (5.x) passes its `.p` to every attention
implementation (eager, sdpa, ...) at each forward, so setting `.p` works for all of them; attention
modules that keep the rate as a float attribute (`attention_dropout`) get that attribute set.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..model_parts import base_model, dropout_modules
from .base import Method, register

CACHE_VERSION = 1
FISHER_SEED = 0  # MLM masking and any fresh head weights: the same for every run, so the cache is valid
HEAD_CHOICES = ("auto", "mlm", "tied-mlm", "task")
CORPUS_CHOICES = ("subsample", "train-split")
FLOAT_DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout")  # attention modules that keep the rate as a float


@dataclass
class GuidedDropoutOptions:
    gd_p_upper: float = field(default=0.1, metadata={"help": "guided dropout: rate of the dropout site with the LOWEST Fisher score", "min": 0, "below": 1})
    gd_p_lower: float = field(default=0.0, metadata={"help": "guided dropout: rate of the dropout site with the HIGHEST Fisher score", "min": 0, "below": 1})
    gd_classifier_dropout: float = field(default=0.1, metadata={"help": "guided dropout: rate of the classifier head's dropout", "min": 0, "below": 1})
    gd_fisher_corpus: str = field(default="subsample", metadata={
        "help": "guided dropout: Fisher text, without labels: the run's training subsample, or the task's whole train split",
        "choices": CORPUS_CHOICES})
    gd_fisher_examples: int = field(default=1000, metadata={"help": "guided dropout: at most this many Fisher texts (a fixed random subset)", "above": 0})
    gd_fisher_head: str = field(default="auto", metadata={
        "help": "guided dropout: loss of the Fisher: auto (the checkpoint's MLM head, else tied-mlm), mlm, tied-mlm "
                "(decoder tied to the embeddings, fresh transform) or task (task loss on the labelled subsample)",
        "choices": HEAD_CHOICES})
    gd_mlm_probability: float = field(default=0.15, metadata={"help": "guided dropout: fraction of tokens masked for the MLM loss", "above": 0, "below": 1})
    gd_cache_dir: str | None = field(default=None, metadata={
        "help": "guided dropout: folder of cached Fisher scores (default $BLO_MIXUP_CACHE/guided_dropout or ~/.cache/blo_mixup/guided_dropout)"})
    gd_recompute: bool = field(default=False, metadata={"help": "guided dropout: recompute the Fisher scores even when cached"})


# ------------------------------------------------------------------------------------------ dropout sites


@dataclass
class DropoutSite:
    """One place where dropout happens, by name, and the parameters that feed it."""

    name: str  # path relative to the base model, e.g. "encoder.layer.0.attention.self.dropout"
    owner: nn.Module  # the module that holds the dropout
    attribute: str  # the attribute of owner: an nn.Dropout, or a float rate
    params: list[str]  # names (relative to the base model) of the parameters feeding the site

    @property
    def rate(self) -> float:
        value = getattr(self.owner, self.attribute)
        return float(value.p if isinstance(value, nn.Dropout) else value)

    def set_rate(self, p: float) -> None:
        value = getattr(self.owner, self.attribute)
        if isinstance(value, nn.Dropout):
            value.p = float(p)
        else:
            setattr(self.owner, self.attribute, float(p))


def dropout_sites(base: nn.Module) -> list[DropoutSite]:
    """The dropout sites inside the encoder (the base model), in module order.

    The feeding parameters of a site are those of the module that holds the dropout: for embeddings
    the embedding tables only; otherwise every parameter of the holder (Q/K/V for self-attention,
    dense + LayerNorm for the attention-output and FFN-output blocks).
    """
    sites = []
    for owner_name, owner in base.named_modules():
        prefix = f"{owner_name}." if owner_name else ""
        attributes = [attr for attr, child in owner.named_children() if isinstance(child, nn.Dropout)]
        if "attention" in type(owner).__name__.lower():
            attributes += [a for a in FLOAT_DROPOUT_ATTRIBUTES if isinstance(getattr(owner, a, None), float)]
        if not attributes:
            continue
        embeddings = [(n, m) for n, m in owner.named_children() if isinstance(m, nn.Embedding)]
        if embeddings:
            params = [f"{prefix}{n}.{p}" for n, m in embeddings for p, _ in m.named_parameters()]
        else:
            params = [f"{prefix}{p}" for p, _ in owner.named_parameters()]
        sites += [DropoutSite(f"{prefix}{attr}", owner, attr, params) for attr in attributes]
    return sites


def site_scores_from_fisher(sites: list[DropoutSite], fisher: dict[str, torch.Tensor]) -> dict[str, float]:
    """Score of each site: the mean Fisher over all scalars of the parameters feeding it."""
    scores = {}
    for site in sites:
        tensors = [fisher[name] for name in site.params if name in fisher]
        if tensors:
            scores[site.name] = float(sum(t.double().sum() for t in tensors) / sum(t.numel() for t in tensors))
    return scores


def dropout_rates(scores: dict[str, float], p_upper: float, p_lower: float) -> dict[str, float]:
    """Linear in rank: the lowest score gets p_upper, the highest p_lower (ties keep model order)."""
    order = sorted(scores, key=scores.get)  # stable: equal scores keep the model's order
    last = max(1, len(order) - 1)
    return {site: p_lower + (p_upper - p_lower) * (last - rank) / last for rank, site in enumerate(order)}


def apply_rates(model, rates: dict[str, float], classifier_rate: float) -> dict[str, float]:
    """Set each encoder site's rate by name, and every dropout outside the encoder to classifier_rate."""
    base = base_model(model)
    sites = {site.name: site for site in dropout_sites(base)}
    missing = sorted(set(rates) - set(sites))
    if missing:
        raise UserError(f"guided dropout: the model has no dropout site {missing[0]} (the Fisher scores were "
                        "computed for another architecture); pass --gd-recompute")
    for name, rate in rates.items():
        sites[name].set_rate(rate)
    inside = {id(m) for m in base.modules()}
    for module in dropout_modules(model):
        if id(module) not in inside:
            module.p = classifier_rate
    if hasattr(model.config, "classifier_dropout"):
        model.config.classifier_dropout = classifier_rate
    return {name: sites[name].rate for name in rates}


# ------------------------------------------------------------------------------------------ the Fisher


def model_loss_of(model, example: dict) -> torch.Tensor:
    """The model's own loss on one example (the task loss)."""
    return model(**example).loss


def masked_lm_loss(model, example: dict) -> torch.Tensor:
    """The MLM loss of one example, with the vocabulary projection run on the masked positions only.

    Equal to model(**example).loss; a forward hook keeps just the masked rows of the encoder's output,
    which makes the large vocabulary projection about 1/mlm_probability times cheaper.
    """
    labels = example["labels"]
    keep = labels != -100

    def only_masked(module, args, output):
        output.last_hidden_state = output.last_hidden_state[keep].unsqueeze(0)
        return output

    handle = base_model(model).register_forward_hook(only_masked)
    try:
        logits = model(**{k: v for k, v in example.items() if k != "labels"}).logits
    finally:
        handle.remove()
    return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels[keep])


def empirical_fisher(model, examples, device, loss_fn=model_loss_of) -> dict[str, torch.Tensor]:
    """F = mean over examples of (dL/dtheta)^2 for the base model's parameters, one example per backward.

    `examples` are model inputs (dicts of tensors with a batch of one, labels included); `loss_fn(model,
    example)` gives the loss (the task loss by default, masked_lm_loss for the MLM).
    """
    from ..training import mean_squared_gradients

    params = dict(base_model(model).named_parameters())
    was_training = model.training
    model.to(device).eval()  # no dropout: the Fisher of the pretrained function itself
    on_device = ({k: v.to(device) for k, v in example.items()} for example in examples)
    fisher = mean_squared_gradients(model, on_device, loss_fn, params)
    model.train(was_training)
    return fisher


def fisher_texts(ctx, options) -> list[tuple[str, ...]]:
    """The Fisher corpus: training texts without labels, at most gd_fisher_examples (fixed random subset)."""
    import numpy as np

    if options.gd_fisher_corpus == "train-split":
        from ..data import load_glue

        rows = load_glue(ctx.task, ctx.run.data_dir)["train"]
    else:
        rows = ctx.train_raw
    columns = [rows[c][:] for c in ctx.task.text_columns]
    texts = [tuple(str(col[i]) for col in columns) for i in range(len(rows))]
    if len(texts) > options.gd_fisher_examples:
        keep = np.sort(np.random.default_rng(FISHER_SEED).choice(len(texts), options.gd_fisher_examples, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def _load_mlm_model(path: str, head: str):
    """The checkpoint as AutoModelForMaskedLM; returns (model, head actually used)."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # missing head weights are expected for headless checkpoints
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"guided dropout could not load {path} as a masked-LM model ({str(e).splitlines()[0]}); "
                        "pass --gd-fisher-head task") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    input_embeddings = model.get_input_embeddings()
    output_embeddings = model.get_output_embeddings()
    # Missing weights outside the encoder, other than the decoder (an alias of the embeddings), mean no head.
    missing_head = [k for k in info["missing_keys"] if not k.startswith(model.base_model_prefix) and "decoder" not in k]
    if not missing_head:
        return model, "mlm"
    if head == "mlm":
        raise UserError(f"the checkpoint {path} has no masked-LM head weights, so --gd-fisher-head mlm is impossible; "
                        "use --gd-fisher-head tied-mlm or task")
    # BERT's own tying: the decoder is the pretrained embedding matrix; the transform stays freshly initialised.
    output_embeddings.weight = input_embeddings.weight
    return model, "tied-mlm"


def mlm_examples(texts, tokenizer, max_length: int, mlm_probability: float):
    """Each text tokenized and MLM-masked alone (one example per backward); texts with no masked token dropped."""
    from transformers import DataCollatorForLanguageModeling

    if tokenizer.mask_token is None:
        raise UserError("the tokenizer has no mask token, so the MLM Fisher is impossible; pass --gd-fisher-head task")
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, return_tensors="pt")
    examples, skipped = [], 0
    for text in texts:
        encoded = tokenizer(*text, truncation=True, max_length=max_length)
        batch = dict(collate([encoded]))
        if (batch["labels"] != -100).any():
            examples.append(batch)
        else:
            skipped += 1
    return examples, skipped


def compute_site_scores(model, ctx, options, texts) -> tuple[dict[str, float], dict]:
    """Fisher scores of the dropout sites (the costly part: one forward and backward per Fisher text)."""
    from ..models import resolve_model_path
    from ..training import model_inputs

    start = time.perf_counter()
    head = options.gd_fisher_head
    sites = dropout_sites(base_model(model))
    if head == "task":
        examples = [{k: v for k, v in model_inputs(batch).items()}
                    for batch in ctx.loader(ctx.train, batch_size=1, shuffle=False)]
        fisher = empirical_fisher(model, examples, ctx.device)
        skipped = 0
    else:
        path = os.path.expanduser(resolve_model_path(ctx.run.model))
        mlm, head = _load_mlm_model(path, head)
        examples, skipped = mlm_examples(texts, ctx.tokenizer, ctx.run.max_length, options.gd_mlm_probability)
        fisher = empirical_fisher(mlm, examples, ctx.device, masked_lm_loss)
        sites = dropout_sites(base_model(mlm))  # same names as the task model's encoder
        del mlm
    scores = site_scores_from_fisher(sites, fisher)
    return scores, {"fisher_head": head, "examples": len(examples), "skipped_without_mask": skipped,
                    "seconds": round(time.perf_counter() - start, 3)}


# ------------------------------------------------------------------------------------------ the cache


def cache_dir(options) -> Path:
    if options.gd_cache_dir:
        return Path(options.gd_cache_dir).expanduser()
    root = os.environ.get("BLO_MIXUP_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "blo_mixup") / "guided_dropout"


def _model_fingerprint(name: str) -> dict:
    """The model path, and for a local folder its config.json and weight files (size, mtime)."""
    from ..models import resolve_model_path

    path = Path(os.path.expanduser(resolve_model_path(name)))
    if not path.is_dir():
        return {"model": name}
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    config = path / "config.json"
    return {
        "model": str(path.resolve()),
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "weights": [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files],
    }


def cache_key(ctx, options, texts) -> dict:
    """Everything the Fisher scores depend on (not the rate bounds: rates are recomputed from the scores)."""
    head = options.gd_fisher_head
    corpus = "labelled-subsample" if head == "task" else options.gd_fisher_corpus
    texts_sha = hashlib.sha256(json.dumps(texts if head != "task" else [list(map(int, ctx.train["idx"][:]))],
                                          ensure_ascii=False).encode()).hexdigest()
    return {"version": CACHE_VERSION, **_model_fingerprint(ctx.run.model), "head": head, "corpus": corpus,
            "corpus_sha256": texts_sha, "examples": len(texts), "max_length": ctx.run.max_length,
            "mlm_probability": options.gd_mlm_probability if head != "task" else None,
            "task": ctx.task.name if head == "task" else None, "seed": FISHER_SEED}


def cached_site_scores(model, ctx, options) -> tuple[dict[str, float], dict]:
    """Site scores from the disk cache, or computed (under a fixed seed) and written there."""
    from ..runs import write_json_atomic

    texts = fisher_texts(ctx, options) if options.gd_fisher_head != "task" else []
    key = cache_key(ctx, options, texts)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir(options) / f"{digest}.json"
    if path.is_file() and not options.gd_recompute:
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["scores"], {**cached["info"], "cache": str(path), "cache_hit": True}
        except (ValueError, KeyError):
            pass  # a damaged cache file is recomputed and replaced
    # A private random stream: the run's own randomness does not depend on whether the cache was hit.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FISHER_SEED)
        scores, info = compute_site_scores(model, ctx, options, texts)
    try:
        write_json_atomic(path, {"key": key, "scores": scores, "info": info})
    except OSError as e:
        raise UserError(f"guided dropout could not write its cache {path} ({e}); pass a writable --gd-cache-dir") from e
    return scores, {**info, "cache": str(path), "cache_hit": False}


# ------------------------------------------------------------------------------------------ the method


@register
class GuidedDropout(Method):
    name = "guided-dropout"
    options_class = GuidedDropoutOptions
    summary = "guided dropout: per-site dropout rates from the MLM Fisher (computed once, cached), then plain fine-tuning"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        o = self.options
        if o.gd_p_lower > o.gd_p_upper:
            raise UserError(f"--gd-p-lower ({o.gd_p_lower}) must not exceed --gd-p-upper ({o.gd_p_upper}); swap them")
        if o.gd_fisher_head == "task" and o.gd_fisher_corpus == "train-split":
            raise UserError("--gd-fisher-head task uses the labels, so only the training subsample is allowed; "
                            "drop --gd-fisher-corpus train-split")
        self.stats = {}

    def prepare_model(self, model, ctx):
        o = self.options
        scores, info = cached_site_scores(model, ctx, o)
        rates = apply_rates(model, dropout_rates(scores, o.gd_p_upper, o.gd_p_lower), o.gd_classifier_dropout)
        self.stats = {**info, "scores": scores, "rates": rates, "classifier_dropout": o.gd_classifier_dropout}
        return model

    def results(self):
        return {"guided_dropout": self.stats}
