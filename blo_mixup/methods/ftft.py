"""FTFT (Du, Gatt, Nguyen, COLING 2025, arXiv 2310.06588): train on the ambiguous third found by a reference model.

A data-level method; the model is untouched (docs/methods.md):
1. a reference model (--ftft-reference-model, default --model) is fine-tuned plainly on the training
   subsample; at every step the probability it gives each example's gold label in the training forward
   pass is recorded under the example's id (`idx`), so models with different tokenizers line up;
2. per example: confidence = mean over epochs, variability = std over epochs (a "data map");
3. the main model is trained on the ambiguous third (the highest variability; or the hard-to-learn
   third, lowest confidence; or a random third) with frequent evaluation and early stopping (patience 2),
   keeping the best evaluated weights. Both run in the shared loop (training.train_loop): the
   evaluations through the evaluate_and_stop hook, their state (best weights included) in checkpoints.

Early stopping evaluates on held-out TRAINING examples, never on the GLUE dev set (the reported test
set): by default the examples that were not selected, or a stratified split held out from the start.
FTFT was designed for large training sets (MNLI) and for robustness and efficiency; with a few hundred
examples the dynamics of three epochs are noisy, so treat it as a robustness/efficiency baseline.

Regression (STS-B) has no gold-label probability; its analogue here is exp(-(prediction - score)^2 / 2),
the Gaussian likelihood that the MSE loss implies (as p_gold = exp(-cross-entropy) for classification).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from .base import Method, register

SELECTIONS = ("ambiguous", "hard-to-learn", "random")
DATA_MAP_FILE = "ftft_data_map.csv"  # in the run folder: the reference model's data map and the selection
HOLDOUTS = ("unselected", "split")


@dataclass
class FtftOptions:
    ftft_reference_model: str | None = field(default=None, metadata={"help": "FTFT: reference model name or path (default: --model)"})
    ftft_reference_epochs: int | None = field(default=None, metadata={"help": "FTFT: reference model epochs, at least 2 (default: --epochs rounded up, at least 2)", "min": 2})
    ftft_reference_lr: float | None = field(default=None, metadata={"help": "FTFT: reference model learning rate (default: --lr, else by the reference model's size)", "above": 0})
    ftft_selection: str = field(default="ambiguous", metadata={"help": "FTFT: which examples to keep: ambiguous (highest variability), hard-to-learn (lowest confidence) or random", "choices": SELECTIONS})
    ftft_fraction: float = field(default=0.33, metadata={"help": "FTFT: fraction of the training examples kept", "above": 0, "below": 1})
    ftft_patience: int = field(default=2, metadata={"help": "FTFT: evaluations without improvement before stopping", "min": 1})
    ftft_eval_every: int = field(default=0, metadata={"help": "FTFT: steps between evaluations of the main model (0: ten evaluations over the run)", "min": 0})
    ftft_max_steps: int = field(default=0, metadata={"help": "FTFT: most steps of the main model (0: the steps of plain fine-tuning on the whole subsample for --epochs)", "min": 0})
    ftft_holdout: str = field(default="unselected", metadata={"help": "FTFT: early-stopping examples: the unselected training examples, or a split held out before the reference run", "choices": HOLDOUTS})
    ftft_holdout_ratio: float = field(default=0.2, metadata={"help": "FTFT: fraction held out with --ftft-holdout split", "above": 0, "below": 1})
    ftft_eval_size: int = field(default=100, metadata={"help": "FTFT: at most this many held-out examples per evaluation (0: all)", "min": 0})


# ------------------------------------------------------------------------------------------ data maps


def gold_probability(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """p(gold label) per example; for regression exp(-(prediction - score)^2 / 2)."""
    if regression:
        return torch.exp(-0.5 * (logits.squeeze(-1).float() - labels.float()) ** 2)
    return torch.softmax(logits.float(), -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def data_map(records: dict[int, list[float]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(ids, confidence, variability): mean and standard deviation (n - 1, as the official code) over epochs."""
    ids = sorted(records)
    values = [np.asarray(records[i], dtype=float) for i in ids]
    confidence = np.array([v.mean() for v in values])
    variability = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return ids, confidence, variability


def write_data_map(path, pool_raw, task, ids, confidence, variability, selected, held_out) -> None:
    """The data map as a table, one row per training example: idx, its text and label as read, confidence,
    variability, whether FTFT trained on it (selected) and whether early stopping scored on it (held_out).
    Rows of the pool only: with --ftft-holdout split the held-out rows had no reference dynamics."""
    import pandas as pd

    from ..predict import write_table

    row = {int(i): r for r, i in enumerate(pool_raw["idx"])}
    rows = pool_raw.select([row[int(i)] for i in ids])  # in the data map's order
    chosen, scored = set(selected), set(held_out)
    table = pd.DataFrame({"idx": ids})
    for column in task.text_columns:
        table[column] = rows[column]
    labels = rows["label"]
    table["label"] = labels if task.label_names is None else [task.label_names[int(y)] for y in labels]
    table["confidence"], table["variability"] = confidence, variability
    table["selected"] = [int(i in chosen) for i in ids]
    table["held_out"] = [int(i in scored) for i in ids]
    write_table(table, path)


def select_examples(ids, confidence, variability, mode: str, fraction: float, seed: int) -> list[int]:
    """The ids of the kept examples: exactly max(1, round(fraction * n)) of them.

    ambiguous: highest variability; hard-to-learn: lowest confidence; ties go to the smaller id.
    """
    n = len(ids)
    k = min(n, max(1, round(fraction * n)))
    ids = np.asarray(ids)
    if mode == "random":
        chosen = np.random.default_rng(seed).choice(n, k, replace=False)
    else:
        key = -np.asarray(variability) if mode == "ambiguous" else np.asarray(confidence)
        chosen = np.lexsort((ids, key))[:k]  # sort by key, then by id
    return sorted(int(i) for i in ids[chosen])


def label_counts(raw, ids, task) -> dict[str, int] | None:
    """How many examples of each label are among `ids` (classification; None for regression): whether the
    kept third is lopsided shows here, without opening the data map."""
    if task.label_names is None:
        return None
    wanted = set(int(i) for i in ids)
    labels = [int(y) for i, y in zip(raw["idx"], raw["label"]) if int(i) in wanted]
    return {name: labels.count(k) for k, name in enumerate(task.label_names)}


class _DynamicsRecorder(Method):
    """Plain fine-tuning that records p(gold) of every example in each training forward pass."""

    name = "ftft-reference"

    def __init__(self, regression: bool):
        super().__init__()
        self.regression = regression
        self.records: dict[int, list[float]] = defaultdict(list)

    def state_dict(self):
        return {"records": dict(self.records)}

    def load_state_dict(self, state):
        self.records = defaultdict(list, {int(k): list(v) for k, v in state["records"].items()})

    def loss(self, model, batch, ctx):
        from ..distributed import share_of, world_size
        from ..training import model_inputs

        outputs = model(**model_inputs(batch))
        probabilities = gold_probability(outputs.logits.detach(), batch["labels"], self.regression)
        # a process whose slice is empty holds one stand-in example (share 0): not recorded
        pairs = list(zip(batch["idx"].tolist(), probabilities.tolist())) if share_of(batch) > 0 else []
        if world_size() > 1:  # every process records the whole global batch, in its order
            import torch.distributed as dist

            slices = [None] * world_size()
            dist.all_gather_object(slices, pairs)
            pairs = [pair for part in slices for pair in part]
        for example_id, p in pairs:
            self.records[int(example_id)].append(p)
        return outputs.loss


# ------------------------------------------------------------------------------------------ early stopping


class EarlyStopping:
    """Stop after `patience` evaluations in a row without a strictly better score."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = -math.inf
        self.best_step = None
        self.bad_evaluations = 0

    def update(self, score: float, step: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        score = -math.inf if score != score else score  # a NaN metric never counts as better
        if score > self.best:
            self.best, self.best_step, self.bad_evaluations = score, step, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evaluations >= self.patience


def holdout_score(model, ctx, data) -> float:
    """The task's main metric on held-out training examples."""
    from ..training import evaluate

    return evaluate(model, ctx, data)[ctx.task.main_metric]


def train_with_early_stopping(model, method, ctx, train_data, holdout, *, max_steps: int, eval_every: int,
                              patience: int, lr: float) -> dict:
    """The shared loop (AdamW, linear warmup/decay over max_steps) with `method` (an Ftft) evaluating on
    `holdout` every eval_every steps and stopping after `patience` evaluations without improvement;
    restores the best evaluated weights."""
    from ..training import train_loop

    method.start_early_stopping(holdout, patience)
    # seed_offset 303: the data order of FTFT's main model since its first version
    stats = train_loop(model, method, ctx, train_data, epochs=ctx.run.epochs, lr=lr, steps=max_steps, seed_offset=303,
                       eval_every=eval_every, desc="FTFT main")
    if method.best_state is not None:
        model.load_state_dict(method.best_state)
    stopper = method.stopper
    return {"steps": stats["steps"], "max_steps": max_steps, "stopped_early": stats["steps"] < max_steps,
            "best_step": stopper.best_step, "best_holdout_score": stopper.best, "evaluations": method.evaluations,
            "final_train_loss": stats["final_train_loss"],
            **({"skipped_steps": stats["skipped_steps"]} if "skipped_steps" in stats else {})}


# ------------------------------------------------------------------------------------------ the method


@register
class Ftft(Method):
    name = "ftft"
    options_class = FtftOptions
    summary = "FTFT: a reference model's data map picks the ambiguous third; train on it with early stopping (robustness baseline)"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        self.stats = {}
        self.start_early_stopping(None, self.options.ftft_patience)

    def start_early_stopping(self, holdout, patience: int) -> None:
        self.holdout, self.stopper, self.evaluations, self.best_state = holdout, EarlyStopping(patience), [], None

    def evaluate_and_stop(self, model, step, ctx):
        score = holdout_score(model, ctx, self.holdout)
        self.evaluations.append({"step": step, "score": score})
        if self.stopper.update(score, step):
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self.stopper.should_stop

    def state_dict(self):
        """The early stopping's state, the best weights included, so --resume goes on after the last evaluation."""
        s = self.stopper
        return {"best": s.best, "best_step": s.best_step, "bad_evaluations": s.bad_evaluations,
                "evaluations": list(self.evaluations), "best_state": self.best_state}

    def load_state_dict(self, state):
        s = self.stopper
        s.best, s.best_step, s.bad_evaluations = state["best"], state["best_step"], state["bad_evaluations"]
        self.evaluations, self.best_state = list(state["evaluations"]), state["best_state"]

    def reference_dynamics(self, ctx, pool_raw) -> dict[int, list[float]]:
        """Fine-tune the reference model plainly on pool_raw; p(gold) per example id and epoch."""
        from ..config import small_model_lr
        from ..data import tokenize
        from ..models import count_parameters, load_model_and_tokenizer
        from ..training import train_loop

        o, run = self.options, ctx.run
        reference, tokenizer = load_model_and_tokenizer(o.ftft_reference_model or run.model, ctx.task)
        lr = o.ftft_reference_lr or run.lr or small_model_lr(count_parameters(reference))
        epochs = o.ftft_reference_epochs or max(2, math.ceil(run.epochs))
        ref_ctx = dataclasses.replace(ctx, tokenizer=tokenizer, train=tokenize(pool_raw, tokenizer, ctx.task, run.max_length), lr=lr)
        recorder = _DynamicsRecorder(ctx.task.is_regression)
        stats = train_loop(reference, recorder, ref_ctx, ref_ctx.train, epochs=epochs, lr=lr, desc="FTFT reference")
        self.stats["reference"] = {"model": o.ftft_reference_model or run.model, "epochs": epochs, "lr": lr,
                                   "train_time_s": round(stats["train_time_s"], 3)}
        return recorder.records

    def planned_weight_updates(self, num_examples, run):
        """The main model's most steps (early stopping may take fewer); the reference model is not counted."""
        from ..config import epochs_of
        from ..training import steps_for

        return self.options.ftft_max_steps or steps_for(num_examples, run.batch_size, epochs_of(run, num_examples))

    def fit(self, model, ctx):
        from ..data import split_two
        from ..training import steps_for

        o, run = self.options, ctx.run
        start = time.perf_counter()
        pool_raw, holdout_raw = ctx.train_raw, None
        if o.ftft_holdout == "split":
            pool_raw, holdout_raw = split_two(ctx.train_raw, 1 - o.ftft_holdout_ratio, run.seed, ctx.task)
        ids, confidence, variability = data_map(self.reference_dynamics(ctx, pool_raw))
        selected = select_examples(ids, confidence, variability, o.ftft_selection, o.ftft_fraction, run.seed)
        position = {int(i): p for p, i in enumerate(ctx.train["idx"][:])}
        train_data = ctx.train.select(sorted(position[i] for i in selected))
        if holdout_raw is None:
            chosen = set(selected)
            held_out = [i for i in ids if i not in chosen]
        else:
            held_out = [int(i) for i in holdout_raw["idx"][:]]
        if o.ftft_eval_size and len(held_out) > o.ftft_eval_size:
            held_out = sorted(np.random.default_rng(run.seed).choice(held_out, o.ftft_eval_size, replace=False).tolist())
        if not held_out:
            raise UserError("FTFT has no held-out training examples for early stopping; lower --ftft-fraction or raise --train-size")
        holdout = ctx.train.select(sorted(position[int(i)] for i in held_out))
        from ..distributed import is_main_process

        if is_main_process():  # written before the main model trains: it explains what the model will see
            write_data_map(ctx.output_dir / DATA_MAP_FILE, pool_raw, ctx.task, ids, confidence, variability, selected, held_out)
        max_steps = o.ftft_max_steps or steps_for(len(ctx.train), run.batch_size, run.epochs)
        eval_every = o.ftft_eval_every or max(1, max_steps // 10)
        main = train_with_early_stopping(model, self, ctx, train_data, holdout, max_steps=max_steps, eval_every=eval_every,
                                         patience=o.ftft_patience, lr=ctx.lr)
        self.stats.update({"selection": o.ftft_selection, "selected": len(selected), "pool": len(ids),
                           "holdout": o.ftft_holdout, "holdout_size": len(held_out),
                           "mean_confidence": float(confidence.mean()), "mean_variability": float(variability.mean()),
                           "selected_mean_variability": float(variability[np.isin(ids, selected)].mean()),
                           "selected_label_counts": label_counts(ctx.train_raw, selected, ctx.task),
                           "data_map": DATA_MAP_FILE,
                           "main": main})
        return {"steps": main["steps"], "train_time_s": time.perf_counter() - start, "final_train_loss": main["final_train_loss"],
                **({"skipped_steps": main["skipped_steps"]} if "skipped_steps" in main else {})}

    def results(self):
        return {"ftft": self.stats}
