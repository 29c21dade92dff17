"""The Betty Problem nodes of the bi-level (and three-level) mixup fine-tuning.

- TaskWeights (lower): the task weights W of a mixed model, trained on D1.
- MixupAttention (upper): the attention A of a WeightMixup, trained on D2 through the hypergradient.
- DataWeighting (optional third node, on top): learns ExampleWeights, one weight per D1 example that
  scales TaskWeights' loss, so that the mixed model does well on D2 (docs/three-levels.md).

Each is an ordinary betty ImplicitProblem: put them in an Engine of your own, or let
blo_mixup.engine assemble the graph. Problems reach each other by name (Betty sets them as
attributes), so TaskWeights finds an ExampleWeights node by the name given in `example_weights`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from betty.hypergradient import jvp_fn_mapping
from betty.problems import ImplicitProblem
from betty.utils import replace_none_with_zero

from ..distributed import all_reduce_weighted, share_of
from ..training import default_param_groups, model_inputs


def per_example_loss(model, batch: dict) -> torch.Tensor:
    """Cross-entropy per example, or squared error for regression (a model with one output)."""
    logits = model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}).logits
    labels = batch["labels"]
    if logits.shape[-1] == 1 and labels.is_floating_point():
        return (logits.squeeze(-1) - labels.to(logits.dtype)).pow(2)
    return F.cross_entropy(logits, labels, reduction="none")


class BloProblem:
    """Betty problem mixin for this project's nodes.

    - A NaN/Inf gradient stops training with the step, or, while fewer than `skip_nonfinite` updates
      were skipped, skips this update (the step counters move on).
    - Data parallel (Betty's "distributed" strategy, blo_mixup/distributed.py): no DDP wrapper and no
      re-batching by Betty (the loaders are already sharded); gradients are averaged explicitly.
    """

    skip_nonfinite = 0
    skipped = 0
    averages_in_backward = False  # SingleBackwardUpper averages its gradients itself
    shaped_by = ()  # names of the levels above that change this node's loss (engine.build_engine sets it)

    def shaped_loss(self, batch, losses: torch.Tensor) -> torch.Tensor:
        """The mean of the per-example `losses`, as changed by each level above that has
        shape_lower_loss(lower, batch, losses, loss) (levels.py), in order."""
        loss = losses.mean()
        for name in self.shaped_by:
            loss = getattr(self, name).shape_lower_loss(self, batch, losses, loss)
        return loss

    def step_normal(self, global_step=None):
        self._global_step = global_step  # Betty sets it for leaves only; error messages name it
        return super().step_normal(global_step=global_step)

    def one_step_descent(self, batch=None):
        from ..logs import current

        loss_dict = super().one_step_descent(batch)
        current().scalar(f"phase1/{self.name}/loss", loss_dict["loss"], self._global_step or self._count)
        return loss_dict

    def patch_module(self):
        self.module.to(self.device)
        if self._strategy == "distributed":
            self.synchronize_params(self.parameters())  # every process starts from rank 0's values

    def patch_data_loader(self, loader):
        return loader

    def reduce(self, tensors, problem=None):
        """Over processes: the share-weighted sum (the global batch's value) of `problem`'s tensors."""
        if self._strategy != "distributed":
            return list(tensors)
        return all_reduce_weighted(list(tensors), share_of((problem or self).cur_batch))

    def optimizer_step(self, *args, **kwargs):
        params = list(self.trainable_parameters())
        if self._strategy == "distributed" and not self.averages_in_backward:
            grads = self.reduce(replace_none_with_zero([p.grad for p in params], params))
            for p, g in zip(params, grads):
                p.grad = g
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if torch.isfinite(norm):
            from ..logs import current

            step, log = self._global_step or self._count, current()
            log.scalar(f"phase1/{self.name}/grad_norm", norm, step)
            log.scalar(f"phase1/{self.name}/lr", self.optimizer.param_groups[0]["lr"], step)
            return super().optimizer_step(*args, **kwargs)
        from ..training import NonFiniteError

        self.skipped += 1
        error = NonFiniteError(f"gradient norm of the '{self.name}' problem", norm.item(), self._global_step, "phase 1 (BLO)")
        if self.skipped > self.skip_nonfinite:
            raise error
        from tqdm.auto import tqdm

        tqdm.write(f"skipped: {error} ({self.skipped} of at most {self.skip_nonfinite})")


class TaskWeights(BloProblem, ImplicitProblem):
    """Lower level: W*(A) = argmin_W L(D1; A*W + (1-A)*W0). The module is the mixed model.

    weight_decay: AdamW decay on matrices (not on biases and LayerNorms); the groups are handed to
    Betty through param_groups(), which Betty otherwise drops when it rebuilds the optimizer.
    shaped_by: names of the problems above whose shape_lower_loss changes this loss (three levels:
    ("data",), the per-example weights); engine.build_engine sets it from the levels' declarations.
    """

    def __init__(self, name, config, module, optimizer, scheduler=None, train_data_loader=None, *,
                 weight_decay: float = 0.01, lr: float | None = None, shaped_by=()):
        super().__init__(name, config, module, optimizer, scheduler, train_data_loader)
        self.weight_decay = weight_decay
        self.lr = lr if lr is not None else optimizer.defaults["lr"]
        self.shaped_by = tuple(shaped_by)

    def training_step(self, batch):
        return self.shaped_loss(batch, per_example_loss(self.module, batch))

    def trainable_parameters(self):
        return [p for p in self.module.parameters() if p.requires_grad]

    def param_groups(self):
        return default_param_groups(self.module.named_parameters(), self.weight_decay, self.lr)


class SingleBackwardUpper(BloProblem, ImplicitProblem):
    """An upper problem whose direct gradient and hypergradient vector come from ONE backward pass.

    Betty differentiates the upper loss twice: once for its own parameters (dL/dA), then again, in
    get_grads, for the lower parameters (dL/dW, the vector the hypergradient method multiplies). Both
    come from the same graph, so one autograd call gives both, saves a full backward pass per upper
    step, and frees the graph at once (no retained graph alive during the hypergradient's passes).
    The chain over a path is Betty's own (jvp_fn_mapping by each problem's config.type). With several
    paths (three levels), the vectors arriving at the same last hop are summed and that hop runs once
    (every hop is linear in its vector). Distributed strategies and gradient accumulation use Betty's
    own backward, which gives the same result with more passes.
    """

    averages_in_backward = True

    def backward(self, loss, params, paths, create_graph=False, retain_graph=True, allow_unused=True):
        simple = (len(paths) > 0 and not create_graph and self._config.first_order
                  and self._strategy in ("default", "cpu", "gpu", "distributed") and self.gradient_accumulation_boundary())
        if not simple:  # Betty's own: one get_grads per path (same result, more passes)
            return super().backward(loss, params, paths, create_graph, retain_graph, allow_unused)
        starts = list({id(path[1]): path[1] for path in paths}.values())
        start_params = [problem.meta_trainable_parameters() for problem in starts]
        flat = [p for group in start_params for p in group]
        # On several processes each vector is averaged before a hop and after it (the hop is linear
        # in its vector and in its problem's batch), so the result is the global batch's.
        grads = torch.autograd.grad(loss, [*params, *flat], allow_unused=True)
        direct, flat_vector = grads[: len(params)], replace_none_with_zero(grads[len(params):], flat)
        if self._strategy == "distributed":
            both = self.reduce([*replace_none_with_zero(direct, params), *flat_vector])
            direct, flat_vector = both[: len(params)], both[len(params):]
        self.set_grads(params, direct)
        vectors, offset = {}, 0
        for problem, group in zip(starts, start_params):
            vectors[id(problem)] = flat_vector[offset: offset + len(group)]
            offset += len(group)
        arriving = {}  # last hop's problem -> (problem, summed vector)
        for path in paths:
            vector = vectors[id(path[1])]
            for i in range(1, len(path) - 2):
                vector = self.reduce(jvp_fn_mapping[path[i].config.type](vector, path[i], path[i + 1], False), path[i])
            last = path[-2]
            if id(last) in arriving:
                vector = [a + b for a, b in zip(arriving[id(last)][1], vector)]
            arriving[id(last)] = (last, vector)
        for last, vector in arriving.values():
            self.set_grads(params, self.reduce(jvp_fn_mapping[last.config.type](vector, last, self, False), last))


class MixupAttention(SingleBackwardUpper):
    """Upper level: min_A L(D2; W_eff(W*(A), A)). The module is the WeightMixup (attention only).

    Its loss uses A directly as well as through W*(A). With Betty's own backward that needs
    Config(retain_graph=True, first_order=True) (docs/method.md, Betty items 2 and 3); the single-backward
    path needs first_order=True only. blo_mixup.engine.upper_config() gives both.
    The constraint (A in [0, 1]) is enforced after every update.
    """

    def training_step(self, batch):
        return self.shaped_loss(batch, per_example_loss(self.module.model, batch))

    def param_callback(self):
        from ..logs import current

        self.module.project_()
        log = current()
        if log.enabled:  # the mean of A per mixed module, after every upper step
            for name, stats in self.module.attention_stats().items():
                log.scalar(f"attention/{name}", stats["mean"], self._global_step or self._count)


class ExampleWeights(torch.nn.Module):
    """One non-negative weight per training example id: softplus of a free parameter, 1 at start.

    ids: the dataset example ids (the 'idx' column) in row order; default 0 .. num_examples - 1.
    Calling the module with a tensor of ids gives their weights (what TaskWeights multiplies its
    per-example losses by); `weights()` gives all of them, in row order.
    """

    def __init__(self, num_examples: int, ids=None):
        super().__init__()
        # softplus(x) = 1 at x = log(e - 1)
        self.raw = torch.nn.Parameter(torch.full((num_examples,), float(torch.log(torch.expm1(torch.tensor(1.0))))))
        self.set_ids(range(num_examples) if ids is None else ids)

    def set_ids(self, ids) -> None:
        """Map dataset example ids (the 'idx' column) to rows of `raw`."""
        ids = [int(i) for i in ids]
        if len(ids) != len(self.raw) or len(set(ids)) != len(ids):
            raise ValueError(f"ExampleWeights needs {len(self.raw)} distinct example ids; got {len(ids)} "
                             f"({len(set(ids))} distinct)")
        self.ids = ids
        self.id_to_position = {i: n for n, i in enumerate(ids)}

    def weights(self) -> torch.Tensor:
        """Every example's weight, in the order of `ids`."""
        return F.softplus(self.raw)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        try:
            rows = [self.id_to_position[int(i)] for i in ids.tolist()]
        except KeyError as error:
            raise KeyError(f"example id {error.args[0]} has no weight: it is not among the ids given to "
                           "ExampleWeights (its lower problem must train on exactly those examples)") from None
        return F.softplus(self.raw[torch.tensor(rows, device=self.raw.device)])


class DataWeighting(SingleBackwardUpper):
    """Top level of the three-level setup: learns ExampleWeights so that the mixed model does well on D2.

    Its loss, the mixed model's loss on a D2 batch, does not use the example weights directly: their
    whole gradient is implicit, through the task weights W (which the weights reweight on D1). Two
    Betty paths reach it (blo_mixup.engine.three_level_dependencies builds them):

        [data, weights, data]             lambda -> W -> top loss            (dL/dW . dW/dlambda)
        [data, attention, weights, data]  lambda -> W -> A -> top loss      (dL/dA . dA/dW . dW/dlambda)

    The inherited single-backward `backward` gets the top loss's gradient with respect to W and to A
    from ONE autograd call and runs the shared last hop (through the task weights) once for both
    paths: the cost of a single path. See docs/three-levels.md.
    """

    def __init__(self, name, config, module, optimizer, scheduler=None, train_data_loader=None, *, model=None):
        super().__init__(name, config, module, optimizer, scheduler, train_data_loader)
        self.model = model

    def training_step(self, batch):
        return self.shaped_loss(batch, per_example_loss(self.model, batch))

    def shape_lower_loss(self, lower, batch, losses, loss):
        """The lower level's loss: its per-example losses weighted by these weights (normalised)."""
        weights = self.module(batch["idx"])
        return (weights * losses).sum() / weights.sum().clamp_min(1e-12)
