"""R-Drop (Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021, arXiv 2106.14448).

Each batch goes through the model twice with dropout on (two different sub-models), and the two
predictive distributions P1, P2 are pulled together. Per example, the paper's equation (3):

    loss = CE1 + CE2 + alpha * 1/2 * (KL(P1 || P2) + KL(P2 || P1))

averaged over the batch. The CE terms are summed, as in the paper's equation (its README's snippet
averages them, 0.5 * (CE1 + CE2), and sums the KL over the batch; under Adam only the ratio of the two
terms matters, and it differs by a factor of 2 and the batch size). For regression (STS-B) the CE
terms are the squared errors and the KL term is (y1 - y2)^2: the symmetric KL, halved, between two
Gaussians of variance 1/2, the distribution whose negative log-likelihood is the squared error.

The two passes run as one forward of the batch stacked on itself (dropout draws differ per row), so
a step costs about two plain forward and backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import Method, register


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) + KL(Q || P) per example, P = softmax(logits_p), Q = softmax(logits_q)."""
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def rdrop_loss(logits1, logits2, labels, alpha: float, regression: bool = False) -> torch.Tensor:
    """Batch mean of CE1 + CE2 + alpha / 2 * (KL(P1||P2) + KL(P2||P1)) (regression: squared errors)."""
    if regression:
        y1, y2, target = logits1.squeeze(-1).float(), logits2.squeeze(-1).float(), labels.float()
        fit = (y1 - target) ** 2 + (y2 - target) ** 2
        agreement = (y1 - y2) ** 2
    else:
        fit = F.cross_entropy(logits1.float(), labels, reduction="none") + F.cross_entropy(logits2.float(), labels, reduction="none")
        agreement = symmetric_kl(logits1, logits2) / 2
    return (fit + alpha * agreement).mean()


@dataclass
class RDropOptions:
    rdrop_alpha: float = field(default=1.0, metadata={"help": "R-Drop: weight of the symmetric KL between the two dropout passes", "min": 0})


@register
class RDrop(Method):
    name = "r-drop"
    options_class = RDropOptions
    summary = "R-Drop: two dropout passes, loss + alpha * symmetric KL between them (Liang et al., NeurIPS 2021)"

    def loss(self, model, batch, ctx):
        inputs = {k: torch.cat([v, v]) for k, v in batch.items() if k not in ("idx", "labels") and torch.is_tensor(v)}
        logits1, logits2 = model(**inputs).logits.chunk(2)
        return rdrop_loss(logits1, logits2, batch["labels"], self.options.rdrop_alpha, is_regression(model))


def is_regression(model) -> bool:
    """True for a one-output regression head (STS-B); models.py sets problem_type when loading."""
    return model.config.problem_type == "regression" or model.config.num_labels == 1
