"""PAC-tuning (Liu et al., EMNLP 2023, arXiv 2310.17588): PAC-Bayes training with learned noise, then perturbed GD.

Posterior Q = N(theta, diag(sigma^2)) with sigma = exp(xi) per trainable scalar; prior
P = N(theta0, lambda_l I) with lambda_l = exp(2 b_l) per parameter tensor l (docs/methods.md):

    KL(Q||P) = 1/2 sum_l sum_i [sigma_i^2/lambda_l + (theta_i - theta0_i)^2/lambda_l - 1 + ln(lambda_l/sigma_i^2)]

Stage 1 minimises over theta, xi and b

    J = L(theta + sigma*eps) + (3/2) gamma K^2 + (KL + C) / (n gamma),   eps ~ N(0, I) clipped to [-2, 2],

with C = 10 + 3 * (number of trainable tensors), gamma = 10, n the number of training examples, and
K read (piecewise linearly) at the prior's scale exp(mean b) from a table estimated once before
training from the spread of the training loss under random perturbations theta0 + N(0, s^2) at eight
scales s. Stage 2 freezes xi and b and keeps injecting eps*sigma at every step, minimising the loss
only. The evaluated and saved model is theta itself, without noise.

As in the paper: dropout 0, embeddings frozen, learning rates 5e-5 for the encoder and 1e-2 for the
task head, no learning-rate schedule, no gradient clipping. The official code's parameter grouping
never matches BERT's names and trains the encoder at 1e-2; that is not reproduced.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from ..errors import UserError
from ..model_parts import DROPOUT_CONFIG_KEYS, set_dropout
from .base import Method, register

PRIOR_SCALES = torch.exp(torch.linspace(-6, -2, 8)).tolist()  # the official K table's prior standard deviations


@dataclass
class PacTuningOptions:
    pac_epochs: float = field(default=12.0, metadata={"help": "PAC-tuning: training epochs, both stages (paper: 250 full-batch epochs on 100 examples)", "above": 0})
    pac_stage1_fraction: float = field(default=0.8, metadata={"help": "PAC-tuning: fraction of the steps in stage 1 (paper: 200 of 250)", "min": 0, "max": 1})
    pac_full_batch: bool = field(default=False, metadata={"help": "PAC-tuning: one step per epoch on the whole training set (the paper), accumulated over --batch-size chunks"})
    pac_gamma: float = field(default=10.0, metadata={"help": "PAC-tuning: gamma of the PAC-Bayes bound", "above": 0})
    pac_backbone_lr: float = field(default=5e-5, metadata={"help": "PAC-tuning: learning rate of the encoder (--lr is not used)", "above": 0})
    pac_head_lr: float = field(default=1e-2, metadata={"help": "PAC-tuning: learning rate of the task head", "above": 0})
    pac_noise_lr: float = field(default=0.1, metadata={"help": "PAC-tuning: Adam learning rate of the noise (xi) and prior (b) parameters", "above": 0})
    pac_k_models: int = field(default=5, metadata={"help": "PAC-tuning: random prior models per scale when estimating K (paper: 10)", "above": 0})
    pac_k_examples: int = field(default=50, metadata={"help": "PAC-tuning: training examples used to estimate K (paper: all 100)", "above": 0})
    pac_freeze_embeddings: bool = field(default=True, metadata={"help": "PAC-tuning: keep the embeddings frozen (the paper does)"})


# ------------------------------------------------------------------------------------------ the bound's terms


def pac_kl(theta, theta0, xi, b: torch.Tensor) -> torch.Tensor:
    """KL(N(theta, exp(xi)^2) || N(theta0, exp(2 b_l))) summed over tensors l and their scalars.

    Written per scalar as e^d - 1 - d with d = ln(sigma^2/lambda), which stays exact near sigma^2 = lambda.
    """
    total = theta[0].new_zeros(())
    for l, (t, t0, x) in enumerate(zip(theta, theta0, xi)):
        d = 2 * (x - b[l])
        total = total + (torch.expm1(d) - d).sum() + ((t - t0) ** 2).sum() * torch.exp(-2 * b[l])
    return 0.5 * total


def k_from_losses(losses: torch.Tensor, gamma: float) -> float:
    """The smallest K with exp(3 gamma^2 K^2 / 2) >= mean exp(gamma (mean loss - loss)).

    `losses`: per-example losses of random prior models (models x examples). The official code finds K
    by a multiplicative search; this is its closed form.
    """
    losses = losses.double()
    log_mean = torch.logsumexp(gamma * (losses.mean() - losses).flatten(), 0) - math.log(losses.numel())
    return math.sqrt(max(2 * log_mean.item(), 0.0) / (3 * gamma ** 2))


def k_at(scale: torch.Tensor, scales: list[float], ks: list[float]) -> torch.Tensor:
    """K at the prior scale `scale`: linear between table points, K[0] below, the last slope above.

    Written with relu so that it is differentiable in scale (the official code's form; its running slope
    alternates signs from the third segment on, which is not reproduced).
    """
    slopes = [(ks[i + 1] - ks[i]) / (scales[i + 1] - scales[i]) for i in range(len(scales) - 1)]
    k = scale.new_tensor(ks[0])
    previous = 0.0
    for i, slope in enumerate(slopes):
        k = k + (slope - previous) * torch.relu(scale - scales[i])
        previous = slope
    return k


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return (logits.squeeze(-1).float() - labels.float()) ** 2
    return nn.functional.cross_entropy(logits.float(), labels, reduction="none")


# ------------------------------------------------------------------------------------------ the trainer


class PacTrainer:
    """theta, the noise xi, the prior b and their optimizers; PacTuning's hooks take the steps in the shared loop."""

    def __init__(self, model, *, n_examples: int, gamma: float, k_scales: list[float], k_values: list[float],
                 backbone_lr: float, head_lr: float, noise_lr: float, weight_decay: float):
        from ..training import default_param_groups

        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.theta = [params[n] for n in self.names]
        self.theta0 = [p.detach().clone() for p in self.theta]
        prefix = f"{model.base_model_prefix}."
        self.is_head = [not n.startswith(prefix) for n in self.names]
        if not any(self.is_head) or all(self.is_head):
            raise UserError("PAC-tuning needs a model with both an encoder and a task head to train; check --model")
        # Official initialisation: sigma = (mean |theta0|)^2 on the encoder, mean |theta0| on the head, and
        # the prior's lambda equal to sigma^2, so that KL = 0 at the start.
        encoder_init = 2 * torch.log(mean_abs([t for t, h in zip(self.theta0, self.is_head) if not h]))
        head_init = torch.log(mean_abs([t for t, h in zip(self.theta0, self.is_head) if h]))
        inits = [head_init if h else encoder_init for h in self.is_head]
        self.xi = [nn.Parameter(torch.full_like(t, float(v))) for t, v in zip(self.theta0, inits)]
        self.b = nn.Parameter(torch.tensor([float(v) for v in inits], device=self.theta0[0].device))
        self.n_examples = n_examples
        self.gamma = gamma
        self.constant = 10 + 3 * len(self.theta)
        self.k_scales, self.k_values = k_scales, k_values
        named = list(zip(self.names, self.theta))
        groups = default_param_groups([(n, p) for (n, p), h in zip(named, self.is_head) if not h], weight_decay, backbone_lr) \
            + default_param_groups([(n, p) for (n, p), h in zip(named, self.is_head) if h], weight_decay, head_lr)
        self.optimizer = torch.optim.AdamW(groups, lr=backbone_lr)
        self.noise_optimizer = torch.optim.Adam([*self.xi, self.b], lr=noise_lr)

    def kl(self) -> torch.Tensor:
        return pac_kl(self.theta, self.theta0, self.xi, self.b)

    def penalty(self) -> torch.Tensor:
        """(3/2) gamma K^2 + (KL + C) / (n gamma), K read at the prior scale exp(mean b)."""
        k = k_at(torch.exp(self.b.mean()), self.k_scales, self.k_values)
        return 1.5 * self.gamma * k ** 2 + (self.kl() + self.constant) / (self.n_examples * self.gamma)

    def perturbed_loss(self, batch: dict, eps: list[torch.Tensor]) -> torch.Tensor:
        """L(theta + sigma * eps), differentiable in theta and xi (sigma = exp(xi))."""
        from ..training import model_inputs

        noisy = {n: t + torch.exp(x) * e for n, t, x, e in zip(self.names, self.theta, self.xi, eps)}
        return functional_call(self.model, noisy, args=(), kwargs=model_inputs(batch)).loss

    @torch.no_grad()
    def summary(self) -> dict:
        sigma = [torch.exp(x) for x in self.xi]
        encoder = [s for s, h in zip(sigma, self.is_head) if not h]
        head = [s for s, h in zip(sigma, self.is_head) if h]
        return {"kl": self.kl().item(), "sigma_mean_encoder": mean_of(encoder), "sigma_mean_head": mean_of(head),
                "prior_std_mean": torch.exp(self.b).mean().item(),
                "K": k_at(torch.exp(self.b.mean()), self.k_scales, self.k_values).item()}


def mean_abs(tensors) -> torch.Tensor:
    return sum(t.abs().sum() for t in tensors) / sum(t.numel() for t in tensors)


def mean_of(tensors) -> float:
    return float(sum(t.sum() for t in tensors) / sum(t.numel() for t in tensors))


# ------------------------------------------------------------------------------------------ K table


@torch.no_grad()
def estimate_k_table(model, ctx, *, gamma: float, models_per_scale: int, examples: int) -> list[float]:
    """K at each prior scale s of PRIOR_SCALES, from per-example losses of theta0 + N(0, s^2) models.

    Perturbs the trainable parameters only; made monotone increasing in s, as the official code does.
    """
    from ..training import model_inputs, to_device

    data = ctx.train
    if len(data) > examples:
        data = data.shuffle(seed=ctx.run.seed).select(range(examples))
    batches = [to_device(b, ctx.device) for b in ctx.loader(data, batch_size=ctx.run.eval_batch_size, shuffle=False)]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    ks = []
    for scale in PRIOR_SCALES:
        losses = []
        for _ in range(models_per_scale):
            noisy = {n: p + scale * torch.randn_like(p) for n, p in trainable.items()}
            losses.append(torch.cat([
                per_example_loss(functional_call(model, noisy, args=(), kwargs={
                    k: v for k, v in model_inputs(b).items() if k != "labels"}).logits, b["labels"], ctx.task.is_regression)
                for b in batches]))
        ks.append(k_from_losses(torch.stack(losses), gamma))
    model.train(was_training)
    for i in range(1, len(ks)):
        ks[i] = max(ks[i], ks[i - 1])
    return ks


# ------------------------------------------------------------------------------------------ the method


@register
class PacTuning(Method):
    name = "pac-tuning"
    options_class = PacTuningOptions
    summary = "PAC-tuning: PAC-Bayes training of weights and learned noise, then perturbed gradient descent"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.stats = {}

    def prepare_model(self, model, ctx):
        # no dropout anywhere: the injected noise is the regulariser
        set_dropout(model, 0.0, (*DROPOUT_CONFIG_KEYS, "classifier_dropout"))
        if self.options.pac_freeze_embeddings:
            for name, param in model.named_parameters():
                if "embed" in name:  # the official rule: every parameter with "embed" in its name
                    param.requires_grad_(False)
        return model

    def planned_weight_updates(self, num_examples, run):
        from ..training import steps_for

        o = self.options
        return max(1, round(o.pac_epochs)) if o.pac_full_batch else steps_for(num_examples, run.batch_size, o.pac_epochs)

    def fit(self, model, ctx):
        """Estimate the K table, then both stages in one run of the shared loop (training.train_loop),
        which switches stage at a step count (prepare_step) and so resumes mid-stage like any method."""
        from ..training import steps_for, train_loop

        o, run = self.options, ctx.run
        model.to(ctx.device).train()
        start = time.perf_counter()
        # redone on --resume, before the loop restores its state: it depends on the seed and the initial model only
        k_values = estimate_k_table(model, ctx, gamma=o.pac_gamma, models_per_scale=o.pac_k_models, examples=o.pac_k_examples)
        k_time = time.perf_counter() - start
        self.trainer = PacTrainer(model, n_examples=len(ctx.train), gamma=o.pac_gamma, k_scales=PRIOR_SCALES, k_values=k_values,
                                  backbone_lr=o.pac_backbone_lr, head_lr=o.pac_head_lr, noise_lr=o.pac_noise_lr,
                                  weight_decay=run.weight_decay)
        total_steps = max(1, round(o.pac_epochs)) if o.pac_full_batch else steps_for(len(ctx.train), run.batch_size, o.pac_epochs)
        self.stage1_steps, self.after_stage1 = round(total_steps * o.pac_stage1_fraction), None
        # the paper's optimisation: no learning-rate schedule (optimizers), no gradient clipping
        stats = train_loop(model, self, ctx, ctx.train, epochs=o.pac_epochs, lr=ctx.lr, max_grad_norm=0.0, steps=total_steps,
                           full_batch=o.pac_full_batch, desc="PAC-tuning")
        if self.after_stage1 is None and 0 < self.stage1_steps == total_steps:
            self.after_stage1 = self.trainer.summary()  # stage 1 took every step
        self.stats = {"k_scales": PRIOR_SCALES, "k_values": k_values, "k_estimation_s": round(k_time, 3),
                      "stage1_steps": self.stage1_steps, "stage2_steps": total_steps - self.stage1_steps,
                      "after_stage1": self.after_stage1, "final": self.trainer.summary(),
                      "backbone_lr": o.pac_backbone_lr, "head_lr": o.pac_head_lr, "full_batch": o.pac_full_batch}
        return {**stats, "train_time_s": k_time + stats["train_time_s"]}

    # --- the shared loop's hooks ----------------------------------------------------------------
    def optimizers(self, model, ctx, lr, total_steps):
        """AdamW on theta (encoder and head learning rates), Adam on xi and b; constant learning rates."""
        return [self.trainer.optimizer, self.trainer.noise_optimizer], None

    def prepare_step(self, model, step, ctx):
        """Stage from the step count; one noise draw eps per step, shared by a full batch's chunks."""
        trainer = self.trainer
        self.stage1 = step <= self.stage1_steps
        if not self.stage1 and self.after_stage1 is None and self.stage1_steps > 0:
            self.after_stage1 = trainer.summary()  # the first step of stage 2: xi and b as stage 1 left them
        for x in [*trainer.xi, trainer.b]:
            x.requires_grad_(self.stage1)  # stage 2: the noise and the prior are frozen
        self.eps = [torch.randn_like(t).clamp_(-2, 2) for t in trainer.theta]

    def loss(self, model, batch, ctx):
        return self.trainer.perturbed_loss(batch, self.eps)

    def before_optimizer_step(self, model, step, ctx):
        # after the gradients are averaged over processes: the penalty is the same on every one
        if self.stage1:
            self.trainer.penalty().backward()

    def state_dict(self):
        trainer = self.trainer
        return {"xi": [x.detach() for x in trainer.xi], "b": trainer.b.detach(), "after_stage1": self.after_stage1}

    @torch.no_grad()
    def load_state_dict(self, state):
        # in place: the optimizers hold these very tensors
        for x, saved in zip(self.trainer.xi, state["xi"]):
            x.copy_(saved)
        self.trainer.b.copy_(state["b"])
        self.after_stage1 = state["after_stage1"]

    def results(self):
        return {"pac": self.stats}
