"""R3F (Aghajanyan et al., "Better Fine-Tuning by Reducing Representational Collapse", ICLR 2021,
arXiv 2008.03156).

A trust-region-style penalty: the prediction must not move when the input embeddings are perturbed
by a tiny noise z. Per example, as in the official fairseq code (sentence_prediction_r3f):

    loss = L(f(x)) + lambda * (KL(f(x) || f(x + z)) + KL(f(x + z) || f(x)))

averaged over the batch, with x the token embeddings (the lookup of the model's input embeddings;
position and type embeddings are added inside the model), z ~ N(0, eps^2) ("normal") or U(-eps, eps)
("uniform"), eps = 1e-5. As in the official code the noisy pass starts from detached embeddings (no
gradient into the embedding table through it), and both passes run with dropout on, so with noise 0
the penalty still holds the dropout disagreement (it is 0 only without dropout). For regression
(STS-B) the KL sum is 2 * (y - y_noisy)^2, the symmetric KL between two Gaussians of variance 1/2 (the
distribution whose negative log-likelihood is the squared error). Cost: about two plain forward and
backward passes per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Method, register
from .rdrop import is_regression, symmetric_kl

NOISE_TYPES = ("normal", "uniform")


def embedding_noise(embeds: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """z ~ N(0, eps^2) or U(-eps, eps), shaped like the embeddings."""
    if kind == "normal":
        return torch.randn_like(embeds) * eps
    return (torch.rand_like(embeds) * 2 - 1) * eps


def r3f_penalty(logits, noisy_logits, regression: bool = False) -> torch.Tensor:
    """Batch mean of KL(P || P_noisy) + KL(P_noisy || P) (regression: 2 * squared difference)."""
    if regression:
        return (2 * (logits.squeeze(-1).float() - noisy_logits.squeeze(-1).float()) ** 2).mean()
    return symmetric_kl(logits, noisy_logits).mean()


@dataclass
class R3FOptions:
    r3f_lambda: float = field(default=1.0, metadata={"help": "R3F: weight of the symmetric KL between clean and noisy predictions", "min": 0})
    r3f_noise: str = field(default="normal", metadata={"help": "R3F: noise on the input embeddings, normal N(0, eps^2) or uniform U(-eps, eps)", "choices": NOISE_TYPES})
    r3f_eps: float = field(default=1e-5, metadata={"help": "R3F: noise scale eps (standard deviation, or half-width for uniform)", "min": 0})


@register
class R3F(Method):
    name = "r3f"
    options_class = R3FOptions
    summary = "R3F: loss + lambda * symmetric KL under noise on the input embeddings (Aghajanyan et al., ICLR 2021)"

    def loss(self, model, batch, ctx=None):
        inputs = {k: v for k, v in batch.items() if k not in ("idx", "input_ids")}
        embeds = model.get_input_embeddings()(batch["input_ids"])
        clean = model(inputs_embeds=embeds, **inputs)
        noisy_embeds = embeds.detach() + embedding_noise(embeds, self.options.r3f_noise, self.options.r3f_eps)
        noisy_logits = model(inputs_embeds=noisy_embeds, **{k: v for k, v in inputs.items() if k != "labels"}).logits
        return clean.loss + self.options.r3f_lambda * r3f_penalty(clean.logits, noisy_logits, is_regression(model))
