"""Three levels (--levels 3): data reweighting on top of the bi-level mixup.

    bottom  "weights"    TaskWeights     W on D1, per-example losses weighted by lambda
    middle  "attention"  MixupAttention  A on D2 (darts-plain through W)
    top     "data"       DataWeighting   lambda = softplus(raw), one per D1 example; loss: the mixed model on D2

What is checked:
- the graph blo_mixup.blo.engine builds gives the top node two Betty paths, [data, weights, data] and
  [data, attention, weights, data], and the top's hypergradient matches a finite-difference truth
  on a tiny float64 model (test_top_hypergradient_matches_the_unrolled_finite_differences: the
  docstring says exactly what is compared);
- with the earlier graph (the second path alone) it would be exactly zero at the pretrained point
  and far off elsewhere (cosine 0.31 with the truth, two of six signs wrong);
- one real phase 1 + phase 2 on a tiny BERT moves all three levels' parameters.
"""

import copy
import json
import logging
import types

import pytest
import torch
from betty.hypergradient import get_grads
from betty.problems import ImplicitProblem

from blo_mixup.config import RunConfig
from blo_mixup.blo.engine import BLOSettings, build_engine
from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup
from blo_mixup.blo.problems import ExampleWeights

DIRECT = ("data", "weights", "data")
THROUGH_ATTENTION = ("data", "attention", "weights", "data")
# Unrolled step sizes (lower alpha, middle beta) and the finite-difference step in raw lambda.
ALPHA = BETA = 1e-3
H = 1e-3
SEED = 0


@pytest.fixture(autouse=True)
def quiet_betty_one_thread():
    # One thread: these models are tiny, and on busy shared cores two threads run them ~50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.INFO)
    yield
    logging.disable(logging.NOTSET)
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# a tiny three-level problem with computable truth (float64, the project's classes and graph)


class TinyClassifier(torch.nn.Module):
    """3 inputs -> tanh(4 hidden) -> 2 classes; "layer" is mixed, "classifier" is not (as in BERT)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 4)
        self.classifier = torch.nn.Linear(4, 2)

    def forward(self, inputs):
        return types.SimpleNamespace(logits=self.classifier(torch.tanh(self.layer(inputs))))


def tiny_engine(moved_from_pretrained=True):
    """build_engine (levels=3) on TinyClassifier in float64, at a fixed point (W, A, lambda).

    moved_from_pretrained: W away from W0 (as after some training) and A inside (0, 1); otherwise
    W == W0 exactly (the pretrained point, where phase 1 starts).
    """
    torch.manual_seed(SEED)  # the layers' and the attention's initialisation
    gen = torch.Generator().manual_seed(SEED)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the model, the attention and ExampleWeights
    try:
        model = TinyClassifier()
        mixup = attach_weight_mixup(model, MixupConfig(init=0.6, init_std=0.1 if moved_from_pretrained else 0.0))
        if moved_from_pretrained:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5 * torch.randn(p.shape, generator=gen))
        d1 = {"inputs": torch.randn(6, 3, generator=gen), "labels": torch.randint(0, 2, (6,), generator=gen),
              "idx": torch.arange(100, 106)}  # dataset ids, not rows
        d2 = {"inputs": torch.randn(8, 3, generator=gen), "labels": torch.randint(0, 2, (8,), generator=gen),
              "idx": torch.arange(8)}
        # darts-plain at the bottom too: the truth below is the unit-step (identity) form, and no step has
        # run here, so the default darts (preconditioned by the optimizer's state) would give zero
        engine = build_engine(model, mixup, [d1], [d2], BLOSettings(levels=3, hypergradient="darts-plain"),
                              device="cpu", train_iters=1, d1_ids=d1["idx"].tolist())
    finally:
        torch.set_default_dtype(default_dtype)
    with torch.no_grad():
        engine.data.module.raw.add_(0.3 * torch.randn(6, generator=gen))  # lambda not all 1
    # what Betty's hops read: each problem's last batch
    engine.weights.cur_batch, engine.attention.cur_batch = d1, d2
    return engine, d1, d2


def engine_top_gradient(engine, d2):
    """The top's gradient exactly as its step computes it (DataWeighting.backward over its paths)."""
    top = engine.data
    top.zero_grad()
    top.backward(top.training_step(d2), top.trainable_parameters(), top.paths)
    grad = top.module.raw.grad.detach().clone()
    top.zero_grad()
    return grad


def per_path(engine, d2):
    """Each path's term on its own, through Betty's own get_grads."""
    return {tuple(p.name for p in path): get_grads(engine.data.training_step(d2), path, False, False)[0]
            for path in engine.data.paths}


def unrolled_routes(engine, d1, d2, alpha=ALPHA, beta=BETA, h=H):
    """Finite-difference truth: re-run one lower and one middle SGD step per perturbed lambda.

    From the current point (W, A, lambda):  W' = W - alpha dL_low(W, A; lambda)/dW   (D1, weighted)
                                             A' = A - beta  dL_mid(W', A)/dA           (D2)
    and the top loss F = L_top(W', A'). By the chain rule dF/dlambda = route 1 + route 2 exactly:
        route 1 = d/dlambda L_top(W'(lambda), A' fixed)     (lambda -> W -> top loss)
        route 2 = d/dlambda L_top(W' fixed, A'(lambda))     (lambda -> W -> A -> top loss)
    each taken by central differences (+-h on each raw lambda, all steps re-run). Returned per unit
    step: route 1 / alpha and route 2 / (alpha beta), the form DARTS's identity inverse Hessian gives
    (a unit step at each level); their small-step limit is what the hypergradient estimates.
    """
    top, lower, middle = engine.data, engine.weights, engine.attention
    w_params, a_params = lower.trainable_parameters(), middle.trainable_parameters()
    raw = top.module.raw

    def run_steps():
        saved = [p.detach().clone() for p in w_params + a_params]
        grads = torch.autograd.grad(lower.training_step(d1), w_params)
        with torch.no_grad():
            for p, g in zip(w_params, grads):
                p.sub_(alpha * g)
        grads = torch.autograd.grad(middle.training_step(d2), a_params)
        with torch.no_grad():
            for p, g in zip(a_params, grads):
                p.sub_(beta * g)
        stepped = [p.detach().clone() for p in w_params + a_params]
        with torch.no_grad():
            for p, s in zip(w_params + a_params, saved):
                p.copy_(s)
        return stepped[: len(w_params)], stepped[len(w_params):]

    def top_loss(w_values, a_values):
        saved = [p.detach().clone() for p in w_params + a_params]
        with torch.no_grad():
            for p, v in zip(w_params + a_params, w_values + a_values):
                p.copy_(v)
            loss = top.training_step(d2).item()
            for p, s in zip(w_params + a_params, saved):
                p.copy_(s)
        return loss

    w_ref, a_ref = run_steps()
    route1, route2 = torch.zeros_like(raw), torch.zeros_like(raw)
    for i in range(len(raw)):
        values = {}
        for sign in (1, -1):
            with torch.no_grad():
                raw[i] += sign * h
            w_new, a_new = run_steps()
            values[sign] = (top_loss(w_new, a_ref), top_loss(w_ref, a_new))
            with torch.no_grad():
                raw[i] -= sign * h
        route1[i] = (values[1][0] - values[-1][0]) / (2 * h)
        route2[i] = (values[1][1] - values[-1][1]) / (2 * h)
    return route1 / alpha, route2 / (alpha * beta)


def relative_error(estimate, truth):
    return ((estimate - truth).norm() / truth.norm()).item()


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_graph_gives_the_top_both_chain_rule_paths():
    engine, _, _ = tiny_engine()
    paths = lambda problem: sorted(tuple(p.name for p in path) for path in problem.paths)
    assert paths(engine.data) == sorted([DIRECT, THROUGH_ATTENTION])
    assert paths(engine.attention) == [("attention", "weights", "attention")]
    assert paths(engine.weights) == []
    assert [p.name for p in engine.leaves] == ["weights"]
    assert sorted(p.name for p in engine.data.children) == ["attention", "weights"]
    # the hop through the middle is darts-plain (Neumann/CG refuse a problem with lower problems)
    assert engine.attention.config.type == "blo_darts_plain"


def test_top_hypergradient_matches_the_unrolled_finite_differences():
    """What is compared, on a tiny float64 model (6 D1 examples, so 6 example weights):

    estimate: the top node's gradient with respect to raw lambda, computed as its Engine step does
        (DataWeighting.backward over the paths that blo_mixup.blo.engine's graph gives it, with the
        project's registered darts-plain, radius 0.01) at the current point (W, A, lambda).
    truth: route 1 / alpha + route 2 / (alpha beta) of `unrolled_routes` (alpha = beta = 1e-3, h =
        1e-3): the change of the top loss after re-running one lower and one middle SGD step for
        each perturbed example weight, per unit step at each level. This is the quantity DARTS
        estimates (identity as inverse Hessian = a unit step); at small steps it is evaluated at the
        same point as the estimate, so they must agree to O(alpha, h^2, radius^2).
    Measured: relative error 7.2e-4 (path by path 1.1e-3 and 7.7e-4), cosine 0.9999999, all six
    signs right. The earlier graph's estimate (the second path alone): cosine 0.31, relative error
    0.97, two of six signs wrong (over seeds 0-5: cosine -0.18 to 0.94, relative error 0.89 to 1.03).
    """
    engine, d1, d2 = tiny_engine()
    estimate = engine_top_gradient(engine, d2)
    terms = per_path(engine, d2)
    route1, route2 = unrolled_routes(engine, d1, d2)
    truth = route1 + route2
    # both routes matter here (otherwise the test could not tell the graphs apart)
    assert route1.norm() > 0.3 * truth.norm() and route2.norm() > 0.3 * truth.norm()

    assert estimate.norm() > 0.05  # measured 0.095: non-zero
    assert relative_error(terms[DIRECT], route1) < 1e-2
    assert relative_error(terms[THROUGH_ATTENTION], route2) < 1e-2
    assert relative_error(estimate, truth) < 1e-2
    assert cosine(estimate, truth) > 0.999
    assert torch.equal(estimate.sign(), truth.sign())  # elementwise (smallest |truth| here: 0.0075)
    # the merged last hop equals the sum of the two paths, each run through Betty's own get_grads,
    # and Betty's own backward (the fallback: one get_grads per path, last one with sync)
    assert relative_error(estimate, terms[DIRECT] + terms[THROUGH_ATTENTION]) < 1e-4
    top = engine.data
    top.zero_grad()
    ImplicitProblem.backward(top, top.training_step(d2), top.trainable_parameters(), top.paths)
    assert relative_error(top.module.raw.grad, estimate) < 1e-4

    # the earlier graph gave the top only the path through the attention: far off here
    old = terms[THROUGH_ATTENTION]
    assert relative_error(old, truth) > 0.5 and cosine(old, truth) < 0.5


def test_at_the_pretrained_point_the_top_gradient_is_the_direct_route():
    """W == W0 (where phase 1 starts): dL/dA = dL/dW_eff * (W - W0) is exactly zero, so the path
    through the attention contributes exactly nothing; the earlier graph, which had only that path,
    gave the top node an exactly zero hypergradient there. The direct path carries it all."""
    engine, d1, d2 = tiny_engine(moved_from_pretrained=False)
    terms = per_path(engine, d2)
    assert torch.count_nonzero(terms[THROUGH_ATTENTION]) == 0
    estimate = engine_top_gradient(engine, d2)
    route1, route2 = unrolled_routes(engine, d1, d2)
    assert route2.abs().max() < 1e-4 * route1.abs().max()  # measured 5e-6: O(alpha), W' != W0
    assert estimate.norm() > 0.01  # measured 0.034
    assert relative_error(estimate, route1) < 1e-2
    assert torch.equal(estimate.sign(), route1.sign())


def test_one_engine_step_moves_the_example_weights_by_minus_the_hypergradient():
    """engine.run() (W and A with learning rate 0, the top with SGD lr 1): lambda moves by exactly
    -(the estimate above), so the Engine's own step order and paths give the checked gradient."""
    engine, d1, d2 = tiny_engine()
    expected = engine_top_gradient(engine, d2)
    for problem in (engine.weights, engine.attention):
        for group in problem.optimizer.param_groups:
            group["lr"] = 0.0
    engine.weights.scheduler = engine.attention.scheduler = None
    engine.data.optimizer = torch.optim.SGD(engine.data.trainable_parameters(), lr=1.0)
    raw_before = engine.data.module.raw.detach().clone()
    w_before = [p.detach().clone() for p in engine.weights.trainable_parameters()]
    engine.run()
    assert all(torch.equal(a, b) for a, b in zip(w_before, engine.weights.trainable_parameters()))
    moved = raw_before - engine.data.module.raw.detach()
    assert relative_error(moved, expected) < 1e-9


# ----------------------------------------------------------------------------------------------
# the whole method on a tiny BERT


def test_phase1_and_phase2_move_all_three_levels(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    from blo_mixup.finetune import build_context
    from blo_mixup.methods import get_method
    from blo_mixup.runs import write_json_atomic
    import blo_mixup.blo.engine as engine_module

    run = RunConfig(task="rte", data_dir=str(glue_dir), model=str(tiny_bert_dir), train_size=10, epochs=1,
                    batch_size=4, max_length=32, output_dir=str(tmp_path / "run"), lr=1e-3)
    cls = get_method("blo-mixup")
    method = cls(cls.options_class(levels=3, upper_lr=0.05, data_weight_lr=0.05), run)
    (tmp_path / "run").mkdir()
    model, ctx = build_context(run, method, tmp_path / "run")
    model = method.prepare_model(model, ctx)
    mixup = method.mixup
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    a_before = copy.deepcopy(mixup.state_dict())

    after_phase1 = {}
    real_phase1 = engine_module.run_phase1

    def spy(*args, **kwargs):
        stats = real_phase1(*args, **kwargs)
        after_phase1["w"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        after_phase1["a"] = copy.deepcopy(mixup.state_dict())
        after_phase1["d1_ids"] = [int(i) for i in kwargs["d1_ids"]]
        return stats

    monkeypatch.setattr(engine_module, "run_phase1", spy)
    stats = method.fit(model, ctx)

    # phase 1 moved all three levels: W, A and the example weights (1.0 at the start)
    assert any(not torch.equal(w_before[n], p) for n, p in after_phase1["w"].items()), "W did not move"
    assert any(not torch.equal(a_before[k], v) for k, v in after_phase1["a"].items()), "A did not move"
    example_weights = stats["phase1"]["example_weights"]
    assert sorted(example_weights["by_id"]) == sorted(after_phase1["d1_ids"])
    start = ExampleWeights(1).weights()[0].item()
    moved = [w for w in example_weights["by_id"].values() if w != start]
    assert len(moved) == len(after_phase1["d1_ids"]), "some example weights did not move"
    assert example_weights["min"] < start < example_weights["max"]  # some up, some down
    # phase 2: A fixed, W trained
    assert all(torch.equal(after_phase1["a"][k], v) for k, v in mixup.state_dict().items())
    assert any(not torch.equal(after_phase1["w"][n], p) for n, p in model.named_parameters())
    assert stats["phase1"]["upper_steps"] >= 1 and stats["phase2"]["steps"] >= 1
    # the stats go into results.json
    write_json_atomic(tmp_path / "results.json", method.results())
    saved = json.loads((tmp_path / "results.json").read_text())["blo"]["phase1"]["example_weights"]
    assert len(saved["by_id"]) == len(after_phase1["d1_ids"])


# ----------------------------------------------------------------------------------------------
# options and small parts


def test_cli_flags_reach_the_method():
    from blo_mixup.cli import build_parser, resolve_finetune

    args = build_parser().parse_args(["finetune", "--method", "blo-mixup", "--task", "rte", "--levels", "3",
                                      "--data-weight-lr", "0.05"])
    _, method = resolve_finetune(args)
    assert (method.options.levels, method.options.data_weight_lr) == (3, 0.05)


def test_example_weights_map_dataset_ids():
    weights = ExampleWeights(3, ids=[7, 3, 9])
    with torch.no_grad():
        weights.raw.copy_(torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(weights(torch.tensor([9, 7])), torch.nn.functional.softplus(torch.tensor([2.0, 0.0])))
    assert torch.allclose(ExampleWeights(2).weights(), torch.ones(2))
    with pytest.raises(KeyError, match="example id 5"):
        weights(torch.tensor([5]))
    with pytest.raises(ValueError, match="3 distinct"):
        ExampleWeights(3, ids=[1, 1, 2])


def test_three_levels_need_the_d1_ids():
    model = TinyClassifier()
    mixup = attach_weight_mixup(model)
    with pytest.raises(ValueError, match="d1_ids"):
        build_engine(model, mixup, [], [], BLOSettings(levels=3), device="cpu", train_iters=1)
