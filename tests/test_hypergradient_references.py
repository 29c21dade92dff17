"""The two references a hypergradient is measured against (blo.hypergradients.references): on the
quadratic problem each equals its closed form; the Adam(W) step it differentiates equals torch's."""

import math

import pytest
import torch

import test_hypergradients as quad
from blo_mixup.blo import hypergradients as hg
from blo_mixup.blo.hypergradients import references as ref

DTYPE = torch.float64


@pytest.mark.parametrize("data", [quad.MID_DATA, quad.ILL_DATA], ids=["mid", "ill"])
def test_implicit_reference_is_the_exact_hypergradient(data):
    """At the lower optimum the ridge's upper loss has no direct part: the implicit part is all of it."""
    exact = quad.exact_solution(*data)[1]
    _, upper, lower = quad.build(data, hg.hypergradient_config("darts-plain"))
    X2, y2 = data[2], data[3]
    vector = torch.autograd.grad(upper.training_step((X2, y2)), [lower.module.value])
    (implicit,), products, residual = ref.implicit_reference(lower, upper, vector, max_products=50, rtol=1e-12)
    assert quad.relative_error(implicit, exact) < 1e-9 and residual < 1e-9 and products <= len(data[4]) + 1


def test_minres_solves_an_indefinite_system_and_reports_its_residual():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=DTYPE))
    matrix = q @ torch.diag(torch.tensor([-3.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0, 9.0], dtype=DTYPE)) @ q.T
    b = [torch.randn(8, generator=gen, dtype=DTYPE)]
    (x,), products, residual = ref.minres(lambda d: [matrix @ d[0]], b, max_products=20, rtol=1e-12)
    assert torch.allclose(x, torch.linalg.solve(matrix, b[0]), atol=1e-10) and residual < 1e-10 and products <= 9
    (_, ), products, residual = ref.minres(lambda d: [matrix @ d[0]], b, max_products=3, rtol=1e-12)
    assert products == 3 and 1e-6 < residual < 1  # capped: the residual says how far it got


def recorded_adam_step(data, clip=0.0, weight_decay=0.0):
    """A lower problem after two real Adam(W) steps, the second recorded; returns (upper, lower, record)."""
    X1, y1 = data[0], data[1]
    start = torch.zeros(len(data[4]), dtype=DTYPE)
    module = quad.Vector(start)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05, weight_decay=weight_decay, decoupled_weight_decay=True)
    config = hg.hypergradient_config("darts-plain", gradient_clipping=clip)
    engine, upper, lower = quad.build(data, config, w=start, lower_optimizer=optimizer, upper_lr=0.0, train_iters=1,
                                      lower_module=quad.Vector)
    engine.run()  # one real step, so the recorded step starts from a non-empty Adam state
    record = ref.StepRecord(lower)
    lower.cur_batch = (X1, y1)
    loss = lower.training_step((X1, y1))
    lower.optimizer.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(lower.trainable_parameters(), clip)
    lower.optimizer.step()
    record.batch = (X1, y1)
    return upper, lower, record


@pytest.mark.parametrize("clip, weight_decay", [(0.0, 0.0), (0.1, 0.01)])
def test_the_recomputed_step_is_torch_s_adamw_step(clip, weight_decay):
    upper, lower, record = recorded_adam_step(quad.MID_DATA, clip, weight_decay)
    if clip:
        assert lower.gradient_clipping == clip
    with torch.no_grad():
        now = lower.module.value.detach().clone()
        lower.module.value.copy_(record.before[0])
    gradient = torch.autograd.grad(lower.training_step(record.batch), [lower.module.value])
    (stepped,) = ref.adamw_step(record, record.before, list(gradient))
    assert torch.allclose(stepped, now, rtol=1e-12, atol=1e-14)


def test_unrolled_reference_is_its_closed_form():
    """Ridge: g = 2 X1^T (X1 w - y1) / n + 2 exp(lam) w, so dg/dlam = diag(2 exp(lam) w) at the step's start,
    and Adam's update moves w_j by -lr/bc1 * m_j / (sqrt(s_j)/sqrt(bc2) + eps), elementwise in g."""
    data = quad.MID_DATA
    X1, y1, X2, y2, lam = data
    upper, lower, record = recorded_adam_step(data)
    vector = torch.autograd.grad(upper.training_step((X2, y2)), [lower.module.value])
    after = lower.module.value.detach().clone()
    (unrolled,) = ref.unrolled_reference(lower, upper, record, vector)
    assert torch.equal(lower.module.value.detach(), after)  # the weights are back after the recomputation

    w = record.before[0]
    g = 2 * X1.T @ (X1 @ w - y1) / len(X1) + 2 * lam.exp() * w
    state = record.state[id(lower.module.value)]
    group = lower.optimizer.param_groups[0]
    (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
    t = float(state["step"]) + 1
    bc1, bc2 = 1 - beta1**t, 1 - beta2**t
    m = beta1 * state["exp_avg"] + (1 - beta1) * g
    s = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
    denominator = s.sqrt() / math.sqrt(bc2) + eps
    d_step_d_g = -lr / bc1 * ((1 - beta1) / denominator - m / denominator**2 * (1 - beta2) * g / (s.sqrt() * math.sqrt(bc2)))
    expected = vector[0] * d_step_d_g * 2 * lam.exp() * w
    assert quad.relative_error(unrolled, expected) < 1e-10


def test_unrolled_reference_matches_finite_differences_through_a_real_adamw_step(tiny_bert_dir, glue_dir):
    """Tiny BERT, float64, dropout off: G(A) = F(W after torch's own AdamW step, clipped, from the recorded
    state, at A); its central difference along a direction d equals (direct + unrolled) . d."""
    from blo_mixup.blo.engine import BLOSettings, build_engine
    from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup
    from blo_mixup.config import RunConfig
    from blo_mixup.data import get_task, load_glue, split_two, subsample
    from blo_mixup.models import load_model_and_tokenizer
    from blo_mixup.training import RunContext

    torch.manual_seed(0)
    task = get_task("rte")
    model, tokenizer = load_model_and_tokenizer(str(tiny_bert_dir), task, eager_attention=True)
    model.double()
    ctx = RunContext.create(RunConfig(task="rte", batch_size=4, max_length=32), task, tokenizer, lr=1e-2)
    d1, d2 = (ctx.tokenize(part) for part in split_two(subsample(load_glue(task, str(glue_dir))["train"], 24, 1, task), 0.8, 1, task))
    mixup = attach_weight_mixup(model, MixupConfig(init_std=0.05))
    mixup.double()
    engine = build_engine(model, mixup, ctx.loader(d1), ctx.loader(d2), BLOSettings(lower_lr=1e-2, lower_clip=0.5, lower_warmup_ratio=0.0),
                          device="cpu", train_iters=4)
    lower, upper = engine.weights, engine.attention
    engine.train()
    for _ in range(2):
        engine.global_step += 1
        engine.train_step()
    record = ref.StepRecord(lower)
    engine.global_step += 1
    engine.train_step()
    record.batch = lower.cur_batch
    model.eval()
    fixed = next(iter(ctx.loader(d2, shuffle=False)))
    a_params, w_params = upper.trainable_parameters(), lower.meta_trainable_parameters()

    def real_step():  # W <- torch's Adam(decoupled) step from the recorded state, at the current A
        with torch.no_grad():
            for p, before in zip(w_params, record.before):
                p.copy_(before)
        gradient = torch.autograd.grad(lower.training_step(record.batch), w_params, allow_unused=True)
        for p, g in zip(w_params, gradient):
            p.grad = torch.zeros_like(p) if g is None else g
        torch.nn.utils.clip_grad_norm_(w_params, record.clip)
        # the hyperparameters the recorded step used (the scheduler has moved the learning rate since)
        optimizer = torch.optim.Adam([{**{k: v for k, v in g.items() if k != "params"}, **record.hyper[id(g["params"][0])],
                                       "params": g["params"]} for g in lower.optimizer.param_groups])
        for p in w_params:
            if id(p) in record.state:
                optimizer.state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in record.state[id(p)].items()}
        optimizer.step()

    def G(shift):
        with torch.no_grad():
            for p, d in zip(a_params, direction):
                p.add_(shift * d)
        real_step()
        value = float(upper.training_step(fixed).detach())
        with torch.no_grad():
            for p, d in zip(a_params, direction):
                p.sub_(shift * d)
        return value

    direction = [torch.randn_like(p) for p in a_params]
    real_step()  # W at the step's result for the current A: where v and the direct part are taken
    found = torch.autograd.grad(upper.training_step(fixed), [*a_params, *w_params], allow_unused=True)
    direct = [torch.zeros_like(p) if g is None else g for g, p in zip(found[:len(a_params)], a_params)]
    vector = [torch.zeros_like(p) if g is None else g for g, p in zip(found[len(a_params):], w_params)]
    unrolled = ref.unrolled_reference(lower, upper, record, vector)
    expected = sum(float(((a + b) * d).sum()) for a, b, d in zip(direct, unrolled, direction))
    h = 1e-5
    finite_difference = (G(h) - G(-h)) / (2 * h)
    implicit_share = sum(float((b * d).sum()) for b, d in zip(unrolled, direction))
    assert abs(implicit_share) > 1e-3 * abs(expected)  # the step's part is not negligible here
    assert abs(finite_difference - expected) < 1e-6 * abs(expected)


def test_the_hypergradients_command_writes_its_table(tiny_bert_dir, glue_dir, tmp_path, capsys):
    import csv

    from blo_mixup.cli import main

    args = ["hypergradients", "--task", "rte", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir), "--train-size", "30",
            "--batch-size", "4", "--max-length", "32", "--epochs", "1", "--max-products", "10"]
    assert main([*args, "--points", "0", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "--points 0: phase 1 has lower steps 1 to 6 here" in capsys.readouterr().err
    assert main([*args, "--points", "2,end", "--hypergradients", "darts-plain,cg,direct-only", "--memory",
                 "--output-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "hypergradients.csv")))
    assert [(r["step"], r["hypergradient"], r["reference"]) for r in rows[:2]] == [("2", "darts-plain", "unrolled"), ("2", "darts-plain", "implicit")]
    assert len(rows) == 2 * 3 * 2 and {r["step"] for r in rows} == {"2", "6"}
    assert all(-1 <= float(r["cosine"]) <= 1 for r in rows if r["hypergradient"] != "direct-only")
    assert all(int(r["implicit_products"]) <= 10 and float(r["implicit_residual"]) >= 0 for r in rows)
    assert all(float(r["peak_mib"]) > 0 for r in rows if r["hypergradient"] != "direct-only")  # --memory
    assert (tmp_path / "hypergradients.png").is_file() and "| cg |" in (tmp_path / "hypergradients.md").read_text()
