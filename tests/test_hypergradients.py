"""Exactness tests for blo_mixup.blo.hypergradients on a quadratic bi-level problem (float64).

Ridge regression with learned per-feature penalties:
    lower  w*(lam) = argmin_w  |X1 w - y1|^2 / n1 + sum_j exp(lam_j) w_j^2
    upper  min_lam F = |X2 w*(lam) - y2|^2 / n2
The exact hypergradient dF/dlam = -(d2L/dlam dw) H^-1 grad_w F comes from differentiating F through
torch.linalg.solve. Each method runs through Betty's own get_grads on two ImplicitProblems built in a
real Engine, with the lower weights placed at their exact optimum.

Run as a script to print the accuracy and timing tables of docs/hypergradients.md:
    .venv/bin/python tests/test_hypergradients.py
"""

import copy
import logging
import math
import time

import pytest
import torch
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.hypergradient import get_grads, jvp_fn_mapping
from betty.problems import ImplicitProblem

from blo_mixup.blo import hypergradients as hg
from blo_mixup.errors import UserError

DTYPE = torch.float64


# ----------------------------------------------------------------------------------------------
# the quadratic problem


class Vector(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(value.clone())


class Penalties(ImplicitProblem):
    """Upper problem: holds lam; its loss is the validation error of the lower weights."""

    def training_step(self, batch):
        X, y = batch
        return ((X @ self.ridge.module.value - y) ** 2).mean()


class Ridge(ImplicitProblem):
    """Lower problem: holds w; its loss is the penalised training error."""

    def training_step(self, batch):
        X, y = batch
        w = self.module.value
        return ((X @ w - y) ** 2).mean() + (self.penalties.module.value.exp() * w**2).sum()


def make_data(dim, n_train, lam_spread, correlation, seed=0):
    """Features, targets and penalties; `correlation` mixes feature 0 into all (worse conditioning)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n_train, dim, generator=gen, dtype=DTYPE)
    X1 = base + correlation * base[:, :1]
    X2 = torch.randn(50, dim, generator=gen, dtype=DTYPE)
    w_true = torch.randn(dim, generator=gen, dtype=DTYPE)
    y1 = X1 @ w_true + 0.3 * torch.randn(n_train, generator=gen, dtype=DTYPE)
    y2 = X2 @ w_true + 0.3 * torch.randn(50, generator=gen, dtype=DTYPE)
    lam = lam_spread * torch.randn(dim, generator=gen, dtype=DTYPE)
    return X1, y1, X2, y2, lam


# Lower Hessian eigenvalues (measured): WELL 3.68..4.16 (condition 1.13, near a multiple of the
# identity: the case where DARTS's identity inverse is honest); MID 2.33..9.38 (condition 4.0);
# ILL 1.71..79.4 (condition 46).
WELL = dict(dim=5, n_train=2000, lam_spread=0.1, correlation=0.0)
MID = dict(dim=6, n_train=60, lam_spread=0.5, correlation=0.3)
ILL = dict(dim=8, n_train=30, lam_spread=1.5, correlation=2.0)
WELL_DATA = make_data(**WELL)
MID_DATA = make_data(**MID)
ILL_DATA = make_data(**ILL)


def exact_solution(X1, y1, X2, y2, lam):
    """(w*, exact hypergradient, lower Hessian) by differentiating through a linear solve."""
    lam = lam.clone().requires_grad_()
    gram = X1.T @ X1 / len(X1) + torch.diag(lam.exp())
    w = torch.linalg.solve(gram, X1.T @ y1 / len(X1))
    upper_loss = ((X2 @ w - y2) ** 2).mean()
    (hypergradient,) = torch.autograd.grad(upper_loss, lam)
    return w.detach(), hypergradient, 2 * gram.detach()


class Halves(torch.nn.Module):
    """w held as two parameter tensors, w = [head, tail] (darts's preconditioner: one scalar per tensor)."""

    def __init__(self, value, split=2):
        super().__init__()
        self.head = torch.nn.Parameter(value[:split].clone())
        self.tail = torch.nn.Parameter(value[split:].clone())

    @property
    def value(self):
        return torch.cat([self.head, self.tail])


def build(data, lower_config, w=None, lower_optimizer=None, upper_lr=1.0, train_iters=1, lower_cls=None,
          lower_module=Vector):
    """Engine with the lower weights at w (default: the exact optimum); returns (engine, upper, lower)."""
    X1, y1, X2, y2, lam = data
    if w is None:
        w = exact_solution(*data)[0]
    upper = Penalties("penalties", Config(retain_graph=True), Vector(lam), None, None, [(X2, y2)])
    upper.optimizer = torch.optim.SGD(upper.module.parameters(), lr=upper_lr)
    lower = (lower_cls or Ridge)("ridge", lower_config, lower_module(w), None, None, [(X1, y1)])
    # lr 0: an Engine step leaves w at the optimum, so one upper SGD step (lr 1) reads off -hypergradient.
    # Betty rebuilds every optimizer over its problem's parameters, so lower_optimizer may hold any.
    lower.optimizer = lower_optimizer or torch.optim.SGD(lower.module.parameters(), lr=0.0)
    engine = Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=train_iters, strategy="cpu"),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )
    lower.cur_batch = (X1, y1)
    return engine, upper, lower


def hypergradient(upper, lower):
    """The implicit part of the upper gradient, through Betty's own get_grads and the path it builds."""
    upper_loss = upper.training_step(upper.train_data_loader[0][0])
    (path,) = upper.paths
    assert [p.name for p in path] == ["penalties", "ridge", "penalties"]
    (grad,) = get_grads(upper_loss, path, retain_graph=False, do_sync=False)
    return grad


def relative_error(estimate, exact):
    return ((estimate - exact).norm() / exact.norm()).item()


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def error_for(data, config):
    exact = exact_solution(*data)[1]
    _, upper, lower = build(data, config)
    return relative_error(hypergradient(upper, lower), exact)


def series_alpha(data):
    """The best fixed Neumann step, 2 / (lowest + highest Hessian eigenvalue)."""
    eigenvalues = torch.linalg.eigvalsh(exact_solution(*data)[2])
    return 2.0 / (eigenvalues.min() + eigenvalues.max()).item()


@pytest.fixture(autouse=True)
def quiet_betty():
    logging.disable(logging.INFO)
    yield
    logging.disable(logging.NOTSET)


# ----------------------------------------------------------------------------------------------
# registration


def test_methods_are_registered_in_betty_under_their_own_names():
    assert hg.HYPERGRADIENTS == ("darts", "darts-plain", "neumann", "cg", "sama", "nystrom", "direct-only")
    assert tuple(name for name, *_ in hg.BUILTINS) == hg.HYPERGRADIENTS[:5]  # one table
    # nystrom and direct-only are registered as a user's method is
    assert not any(hg.get_hypergradient(name).builtin for name in ("nystrom", "direct-only"))
    for name in hg.HYPERGRADIENTS:
        record = hg.get_hypergradient(name)
        assert record.fn is getattr(hg, name.replace("-", "_")) and jvp_fn_mapping[record.betty_type] is record.betty_fn
    assert jvp_fn_mapping["blo_darts"] is hg.darts and jvp_fn_mapping["blo_darts_plain"] is hg.darts_plain
    from betty.hypergradient.cg import cg as betty_cg

    assert jvp_fn_mapping["cg"] is betty_cg  # Betty's own names untouched


def test_the_old_names_still_work_for_one_release_and_say_so():
    with pytest.warns(DeprecationWarning, match="REGISTERED_NAMES is deprecated"):
        assert hg.REGISTERED_NAMES["neumann"] == "blo_neumann"
    with pytest.warns(DeprecationWarning, match="DEFAULTS is deprecated"):
        assert hg.DEFAULTS["neumann"] == {"iterations": 3, "alpha": 0.01}
    before = dict(jvp_fn_mapping)
    with pytest.warns(DeprecationWarning, match="register is deprecated"):
        hg.register()
    assert jvp_fn_mapping == before  # idempotent


def test_settings_are_built_once_and_give_the_lower_config():
    settings = hg.HypergradientSettings.build("Neumann", iterations=4, options="alpha=0.1", unroll_steps=2)
    assert (settings.name, dict(settings.options), settings.unroll_steps, settings.second_order) == (
        "neumann", {"iterations": 4, "alpha": 0.1}, 2, True)
    config = settings.betty_config(gradient_clipping=5.0)
    assert (config.type, config.unroll_steps, config.neumann_iterations, config.neumann_alpha, config.gradient_clipping) == (
        "blo_neumann", 2, 4, 0.1, 5.0)
    assert vars(config) == vars(hg.hypergradient_config("neumann", iterations=4, options="alpha=0.1", unroll_steps=2,
                                                          gradient_clipping=5.0))
    with pytest.raises(UserError, match="Config field 'unroll_steps' is set from the hypergradient's options"):
        settings.betty_config(unroll_steps=3)
    with pytest.raises(UserError, match="unroll_steps=0 for the 'darts' hypergradient; give a whole number >= 1"):
        hg.HypergradientSettings.build("darts", unroll_steps=0)


# ----------------------------------------------------------------------------------------------
# neumann and cg: exact in the limit


def test_neumann_converges_to_the_exact_hypergradient():
    alpha = series_alpha(MID_DATA)
    errors = [error_for(MID_DATA, hg.hypergradient_config("neumann", iterations=k, alpha=alpha))
              for k in (1, 5, 20, 50)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 1e-2
    assert errors[-1] < 1e-6


def test_cg_converges_to_the_exact_hypergradient_within_dim_steps():
    dim = MID["dim"]
    errors = [error_for(MID_DATA, hg.hypergradient_config("cg", iterations=k)) for k in (1, 3, dim)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 1e-2
    assert errors[-1] < 1e-10
    # conditioning matters far less to CG than to Neumann (which is at 0.1 after 50 iterations here)
    assert error_for(ILL_DATA, hg.hypergradient_config("cg", iterations=ILL["dim"])) < 1e-6
    assert error_for(ILL_DATA, hg.hypergradient_config("cg", iterations=20)) < 1e-12


@pytest.mark.parametrize("data", [MID_DATA, ILL_DATA], ids=["mid", "ill"])
def test_nystrom_at_full_rank_is_the_exact_hypergradient(data):
    dim = len(data[4])
    assert error_for(data, hg.hypergradient_config("nystrom", options={"rank": dim, "rho": 1e-7})) < 1e-6
    # fewer rows than weights: an approximation, whose error the damping decides
    assert error_for(data, hg.hypergradient_config("nystrom", options={"rank": dim // 2, "rho": 1.0})) > 1e-3


def test_nystrom_inverse_hvp_follows_its_equation():
    """(C^T W^+ C + rho I)^-1 v with C the chosen rows of the exact Hessian, at low rank."""
    X1, y1, X2, y2, lam = MID_DATA
    w, _, hessian = exact_solution(*MID_DATA)
    _, upper, lower = build(MID_DATA, hg.hypergradient_config("nystrom"))
    params, lower_grad = hg.implicit.lower_gradient_with_graph(lower)
    v = [torch.randn(len(w), generator=torch.Generator().manual_seed(3), dtype=DTYPE)]
    for rank, rho in ((2, 0.5), (4, 0.01)):
        (x,) = hg.nystrom_inverse_hvp(v, lower_grad, params, rank, rho, torch.Generator().manual_seed(7))
        rows = torch.randperm(len(w), generator=torch.Generator().manual_seed(7))[:rank]
        c = hessian[rows]
        approx = c.T @ torch.linalg.pinv(c[:, rows]) @ c
        expected = torch.linalg.solve(approx + rho * torch.eye(len(w), dtype=DTYPE), v[0])
        assert torch.allclose(x, expected, rtol=1e-9, atol=1e-12)


def test_nystrom_draws_rows_reproducibly_without_touching_the_run_s_random_stream():
    _, upper, lower = build(MID_DATA, hg.hypergradient_config("nystrom", options={"rank": 2}))
    torch.manual_seed(0)
    first = hypergradient(upper, lower)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(hypergradient(upper, lower), first) and torch.equal(torch.rand(1), after)
    rows = lambda seed: set(torch.randperm(MID["dim"], generator=torch.Generator().manual_seed(seed * 1_000_003))[:2].tolist())
    other = next(seed for seed in range(2, 20) if rows(seed) != rows(1))
    _, upper, lower = build(MID_DATA, hg.hypergradient_config("nystrom", options={"rank": 2, "seed": other}))
    assert not torch.equal(hypergradient(upper, lower), first)  # another seed, other rows


def test_direct_only_has_no_implicit_part():
    _, upper, lower = build(MID_DATA, hg.hypergradient_config("direct-only"))
    assert torch.equal(hypergradient(upper, lower), torch.zeros(MID["dim"], dtype=DTYPE))
    assert hg.hypergradient_config("direct-only").first_order  # Betty's flag untouched: still the usual path


def test_betty_cg_does_not_converge():
    """Why blo_mixup replaces it: Betty 0.2.1 builds the new direction from the old residual."""
    error = error_for(MID_DATA, Config(type="cg", cg_iterations=20))
    assert error > 1e-2
    assert error_for(MID_DATA, hg.hypergradient_config("cg", iterations=20)) < 1e-10


def test_neumann_follows_betty_conventions():
    alpha = series_alpha(MID_DATA)
    exact = exact_solution(*MID_DATA)[1]
    ours = hypergradient(*build(MID_DATA, hg.hypergradient_config("neumann", iterations=5, alpha=alpha))[1:])
    betty = hypergradient(*build(MID_DATA, Config(type="neumann", neumann_iterations=5, neumann_alpha=alpha))[1:])
    assert relative_error(ours, betty) < 1e-12
    assert relative_error(ours, exact) > 1e-4  # 5 iterations are not exact: the match is not trivial


def test_cg_stops_at_negative_curvature():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DTYPE))
    indefinite = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=DTYPE)
    (lower_grad,) = torch.autograd.grad(0.5 * w @ indefinite @ w, [w], create_graph=True)
    v = [torch.tensor([0.0, 1.0], dtype=DTYPE)]  # v.Hv < 0 at the first step: identity fallback
    assert torch.equal(hg.conjugate_gradient(v, [lower_grad], [w], 5)[0], v[0])
    positive = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=DTYPE)
    (lower_grad,) = torch.autograd.grad(0.5 * w @ positive @ w, [w], create_graph=True)
    x = hg.conjugate_gradient([torch.tensor([1.0, 1.0], dtype=DTYPE)], [lower_grad], [w], 5)[0]
    assert torch.allclose(x, torch.linalg.solve(positive, torch.tensor([1.0, 1.0], dtype=DTYPE)))


# ----------------------------------------------------------------------------------------------
# darts, darts-plain and sama: finite differences that leave the lower weights bitwise unchanged


def test_darts_plain_points_the_right_way_and_restores_the_lower_weights():
    exact = exact_solution(*WELL_DATA)[1]
    _, upper, lower = build(WELL_DATA, hg.hypergradient_config("darts-plain"))
    before = lower.module.value.detach().clone()
    ours = hypergradient(upper, lower)
    assert torch.equal(lower.module.value, before)
    assert cosine(ours, exact) > 0.99
    # same conventions as Betty's darts (which only restores the weights up to rounding)
    betty = hypergradient(*build(WELL_DATA, Config(type="darts"))[1:])
    assert relative_error(ours, betty) < 1e-9


def test_darts_plain_is_exact_with_the_identity_as_inverse_hessian():
    """For this lower loss dL/dlam is quadratic in w, so the central difference is exact:
    darts-plain returns -(d2L/dlam dw) v exactly, whatever the radius."""
    X1, y1, X2, y2, lam = MID_DATA
    w = exact_solution(*MID_DATA)[0]
    v = 2 * X2.T @ (X2 @ w - y2) / len(X2)
    identity_inverse = -(2 * lam.exp() * w) * v
    for radius in (1e-3, 0.01, 1.0):
        estimate = hypergradient(*build(MID_DATA, hg.hypergradient_config("darts-plain", radius=radius))[1:])
        assert relative_error(estimate, identity_inverse) < 1e-8


class DropoutRidge(ImplicitProblem):
    """Lower loss with dropout on the features, and lam scaling the weights inside the data term."""

    def training_step(self, batch):
        X, y = batch
        w = self.module.value
        scaled = self.penalties.module.value.exp() * w
        return ((torch.nn.functional.dropout(X, 0.5, training=True) @ scaled - y) ** 2).mean() + (w**2).sum()


@pytest.mark.parametrize("name, betty_type", [("darts", "darts"), ("darts-plain", "darts"), ("sama", "sama")])
def test_finite_differences_use_one_dropout_mask(name, betty_type):
    """dL/dlam is quadratic in w here, so with ONE mask the central difference is exact; Betty's
    darts draws a new mask for each side and is off by orders of magnitude."""
    X1, y1, X2, y2, lam = MID_DATA
    w = exact_solution(*MID_DATA)[0]
    results = {}
    for label, config in (("ours", hg.hypergradient_config(name)), ("betty", Config(type=betty_type))):
        optimizer = torch.optim.SGD([torch.nn.Parameter(w.clone())], lr=0.1)
        _, upper, lower = build(MID_DATA, config, lower_optimizer=optimizer, lower_cls=DropoutRidge)
        torch.manual_seed(7)
        results[label] = hypergradient(upper, lower)
    # expected: the exact mixed product on the mask that seed 7 draws first (SGD: sama's P = lr; darts's
    # preconditioner is 1, as Betty 0.2.0's; darts-plain has none)
    torch.manual_seed(7)
    w_param = lower.module.value
    (lower_grad,) = torch.autograd.grad(lower.training_step((X1, y1)), [w_param], create_graph=True)
    v = 2 * X2.T @ (X2 @ w - y2) / len(X2) * (0.1 if name == "sama" else 1.0)
    (expected,) = torch.autograd.grad(lower_grad, [upper.module.value], grad_outputs=v)
    assert relative_error(results["ours"], -expected) < 1e-8
    assert relative_error(results["betty"], -expected) > 1.0


def adam_lower(data, optimizer_cls=torch.optim.Adam, steps=3, name="sama", lower_module=Vector, **optimizer_kwargs):
    """Engine whose lower problem took `steps` real optimizer steps (the upper stays fixed)."""
    X1, y1, X2, y2, lam = data
    start = torch.zeros(len(lam), dtype=DTYPE)
    module = lower_module(start)
    optimizer = optimizer_cls(module.parameters(), **optimizer_kwargs)
    engine, upper, lower = build(data, hg.hypergradient_config(name), w=start, lower_optimizer=optimizer,
                                 upper_lr=0.0, train_iters=steps, lower_module=lower_module)
    tracker = hg.prepare_sama(lower) if name == "sama" else None
    engine.run()
    return upper, lower, tracker


def betty_020_scale(optimizer, param):
    """Betty 0.2.0's hypergradient.utils.precondition for Adam, as it reads: vector / denom, one denom
    per parameter tensor (written out here independently of blo_mixup.blo.hypergradients)."""
    state, group = optimizer.state[param], optimizer.param_groups[0]
    beta2 = group["betas"][1]
    denom = torch.add(torch.sqrt(torch.mean(beta2 * state["exp_avg_sq"])), group["eps"]) / math.sqrt(
        1 - beta2 ** float(state["step"]))
    return 1 / denom


def test_darts_is_the_official_codes_preconditioned_finite_difference_and_restores_weights():
    """darts = -(d2L/dlam dw) (s v), s = Betty 0.2.0's preconditioner, one scalar per weight tensor,
    after 3 real Adam steps (the lower weights w = [head, tail] are two tensors). The lower loss's
    dL/dlam is quadratic in w, so the central difference is exact: any other preconditioner fails."""
    X1, y1, X2, y2, lam = MID_DATA
    upper, lower, _ = adam_lower(MID_DATA, steps=3, name="darts", lower_module=Halves, lr=0.05)
    head, tail = lower.module.head, lower.module.tail
    before = [head.detach().clone(), tail.detach().clone()]
    w = lower.module.value.detach()
    v = 2 * X2.T @ (X2 @ w - y2) / len(X2)
    mixed = -(2 * lam.exp() * w)  # -(d2L/dlam dw), diagonal

    def expected(head_scale, tail_scale=None):
        tail_scale = head_scale if tail_scale is None else tail_scale
        return mixed * torch.cat([head_scale * v[:2], tail_scale * v[2:]])

    optimizer = lower.optimizer
    s_head, s_tail = betty_020_scale(optimizer, head), betty_020_scale(optimizer, tail)
    estimate = hypergradient(upper, lower)
    assert torch.equal(head, before[0]) and torch.equal(tail, before[1])
    assert relative_error(estimate, expected(s_head, s_tail)) < 1e-10
    assert float(hg.darts_preconditioner(optimizer, head)) == pytest.approx(s_head.item(), rel=1e-12)

    # what any other reading of "preconditioned" would give: each is far from the estimate
    beta2, eps, lr = 0.999, optimizer.param_groups[0]["eps"], 0.05
    correction = math.sqrt(1 - beta2**3)
    state = {p: optimizer.state[p] for p in (head, tail)}
    alternatives = {
        "no preconditioning (darts-plain)": expected(1.0),
        "no bias correction": expected(s_head / correction, s_tail / correction),
        "with the learning rate": expected(lr * s_head, lr * s_tail),
        "one scalar for all tensors": expected(correction / (torch.sqrt(beta2 * torch.cat(
            [state[head]["exp_avg_sq"], state[tail]["exp_avg_sq"]]).mean()) + eps)),
        "elementwise": mixed * correction * v / (torch.sqrt(beta2 * torch.cat(
            [state[head]["exp_avg_sq"], state[tail]["exp_avg_sq"]])) + eps),
    }
    for label, value in alternatives.items():
        assert relative_error(estimate, value) > 0.1, label


def test_darts_preconditioner_with_sgd_is_one_and_before_any_step_zero():
    """SGD: darts equals darts-plain exactly (Betty 0.2.0 returns the vector unchanged for SGD).
    Adam before its first step: the preconditioner is 0, so the implicit part is 0 (Betty 0.2.0
    divides by sqrt(1 - beta2^0) = 0 there, with the same result)."""
    results = {}
    for name in ("darts", "darts-plain"):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(6, dtype=DTYPE))], lr=0.1, momentum=0.9)
        results[name] = hypergradient(*build(MID_DATA, hg.hypergradient_config(name), lower_optimizer=optimizer)[1:])
    assert torch.equal(results["darts"], results["darts-plain"]) and results["darts"].norm() > 0
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(6, dtype=DTYPE))], lr=0.1)
    _, upper, lower = build(MID_DATA, hg.hypergradient_config("darts"), lower_optimizer=optimizer)
    assert torch.count_nonzero(hypergradient(upper, lower)) == 0


def test_darts_rejects_an_optimizer_it_cannot_precondition():
    optimizer = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(5, dtype=DTYPE))], lr=0.01)
    _, upper, lower = build(WELL_DATA, hg.hypergradient_config("darts"), lower_optimizer=optimizer)
    with pytest.raises(UserError, match="'darts'.*RMSprop.*'darts-plain'"):
        hypergradient(upper, lower)


def test_sama_is_the_finite_difference_of_the_preconditioned_vector_and_restores_weights():
    X1, y1, X2, y2, lam = WELL_DATA
    upper, lower, tracker = adam_lower(WELL_DATA, steps=30, lr=0.05)
    w = lower.module.value.detach().clone()
    v = 2 * X2.T @ (X2 @ w - y2) / len(X2)
    preconditioner = tracker.derivatives[lower.module.value]
    expected = -(2 * lam.exp() * w) * (preconditioner * v)
    estimate = hypergradient(upper, lower)
    assert torch.equal(lower.module.value, w)
    assert relative_error(estimate, expected) < 1e-8
    # direction sanity against the exact implicit term at these (not yet optimal) weights. SAMA
    # approximates the one-step Jacobian of Adam, not H^-1: measured cosine 0.24 after 3 Adam steps,
    # 0.91 after 30, 0.92 after 100 (lr 0.05).
    hessian = 2 * (X1.T @ X1 / len(X1) + torch.diag(lam.exp()))
    exact_implicit = -(2 * lam.exp() * w) * torch.linalg.solve(hessian, v)
    assert cosine(estimate, exact_implicit) > 0.5


@pytest.mark.parametrize(
    "optimizer_cls, kwargs",
    [
        (torch.optim.Adam, dict(lr=0.01)),
        (torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
        (torch.optim.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
        (torch.optim.AdamW, dict(lr=0.01, betas=(0.8, 0.99))),
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1)),
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    ],
)
def test_recorded_update_derivative_matches_the_optimizer_step(optimizer_cls, kwargs):
    """The tracker's d(update)/d(grad) equals a central difference of torch's own step."""
    gen = torch.Generator().manual_seed(1)
    param = torch.nn.Parameter(torch.randn(7, generator=gen, dtype=DTYPE))
    optimizer = optimizer_cls([param], **kwargs)
    tracker = hg.UpdateDerivativeTracker(optimizer)
    for _ in range(3):
        param.grad = torch.randn(7, generator=gen, dtype=DTYPE)
        optimizer.step()
    grad = torch.randn(7, generator=gen, dtype=DTYPE)

    def update(g):
        p = torch.nn.Parameter(param.detach().clone())
        opt = optimizer_cls([p], **kwargs)
        opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        p.grad = g.clone()
        opt.step()
        return param.detach() - p.detach()

    delta = 1e-6
    numeric = (update(grad + delta) - update(grad - delta)) / (2 * delta)
    param.grad = grad
    optimizer.step()
    recorded = tracker.derivatives[param] * torch.ones(7, dtype=DTYPE)
    assert torch.allclose(recorded, numeric, rtol=1e-6, atol=1e-9 * numeric.abs().max().item())


def test_sama_without_prepare_installs_its_hook_on_the_first_call():
    X1, y1, X2, y2, lam = WELL_DATA
    start = torch.zeros(len(lam), dtype=DTYPE)
    optimizer = torch.optim.Adam([torch.nn.Parameter(start.clone())], lr=0.05)
    engine, upper, lower = build(WELL_DATA, hg.hypergradient_config("sama"), w=start,
                                 lower_optimizer=optimizer, upper_lr=0.0, train_iters=2)
    engine.run()  # the first upper step ran sama without a recorded step
    tracker = lower.optimizer._blo_mixup_update_derivatives
    assert lower.module.value in tracker.derivatives  # recorded from the second lower step on
    assert torch.isfinite(hypergradient(upper, lower)).all()


def test_sama_rejects_an_unsupported_lower_optimizer():
    optimizer = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(5, dtype=DTYPE))], lr=0.01)
    _, upper, lower = build(WELL_DATA, hg.hypergradient_config("sama"), lower_optimizer=optimizer)
    with pytest.raises(UserError, match="sama.*RMSprop"):
        hypergradient(upper, lower)


# ----------------------------------------------------------------------------------------------
# inside a running Engine (sync=True, Betty's usual path)


@pytest.mark.parametrize("name", hg.HYPERGRADIENTS)
def test_sync_adds_the_same_gradient_as_the_returned_value(name):
    X1, y1, X2, y2, lam = WELL_DATA
    if name in ("sama", "darts"):  # preconditioned by the lower optimizer's state: take real Adam steps
        upper, lower, _ = adam_lower(WELL_DATA, name=name, lr=0.05)
    else:
        _, upper, lower = build(WELL_DATA, hg.hypergradient_config(name))
    returned = hypergradient(upper, lower)
    upper.zero_grad()
    upper.module.value.grad = torch.ones_like(upper.module.value)  # sync must ADD to existing grads
    vector = torch.autograd.grad(upper.training_step((X2, y2)), [lower.module.value])
    assert jvp_fn_mapping[lower.config.type](vector, lower, upper, True) is None
    assert torch.allclose(upper.module.value.grad - 1, returned, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name, options", [("darts", {}), ("darts-plain", {}), ("neumann", None), ("cg", {"iterations": 6})])
def test_one_engine_step_applies_the_hypergradient(name, options):
    """engine.run(): lower SGD lr 0 keeps w at w*, upper SGD lr 1 moves lam by -hypergradient."""
    if options is None:
        options = {"iterations": 50, "alpha": series_alpha(MID_DATA)}
    exact = exact_solution(*MID_DATA)[1]
    engine, upper, lower = build(MID_DATA, hg.hypergradient_config(name, **options))
    expected = hypergradient(upper, lower)
    lam_before = upper.module.value.detach().clone()
    w_before = lower.module.value.detach().clone()
    engine.run()
    assert torch.equal(lower.module.value, w_before)
    assert torch.allclose(lam_before - upper.module.value.detach(), expected, rtol=1e-10, atol=1e-14)
    if name in ("neumann", "cg"):
        assert relative_error(expected, exact) < 1e-6


# ----------------------------------------------------------------------------------------------
# hypergradient_config


def test_config_fields_and_defaults():
    darts = hg.hypergradient_config("darts")
    assert (darts.type, darts.darts_alpha, darts.unroll_steps) == ("blo_darts", 0.01, 1)
    plain = hg.hypergradient_config("Darts-Plain", radius=0.1)
    assert (plain.type, plain.darts_alpha) == ("blo_darts_plain", 0.1)
    assert hg.hypergradient_config("blo_darts_plain").type == "blo_darts_plain"
    sama = hg.hypergradient_config("SAMA", radius=0.5, unroll_steps=5)
    assert (sama.type, sama.sama_adam_alpha, sama.unroll_steps) == ("blo_sama", 0.5, 5)
    neumann = hg.hypergradient_config("neumann")
    assert (neumann.type, neumann.neumann_iterations, neumann.neumann_alpha) == ("blo_neumann", 3, 0.01)
    cg = hg.hypergradient_config("cg", iterations=10, gradient_clipping=5.0)
    assert (cg.type, cg.cg_iterations, cg.gradient_clipping) == ("blo_cg", 10, 5.0)
    assert hg.needs_double_backward("neumann") and hg.needs_double_backward("cg")
    assert not any(hg.needs_double_backward(name) for name in ("darts", "darts-plain", "sama"))


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("dart",), {}, "unknown hypergradient 'dart'.*did you mean 'darts'"),
        (("darts",), {"iterations": 5}, "iterations=5 does not apply to the 'darts'"),
        (("darts-plain",), {"alpha": 0.1}, "alpha=0.1 does not apply to the 'darts-plain'"),
        (("darts-plain",), {"radius": 0.0}, "radius=0.0 for the 'darts-plain'"),
        (("sama",), {"alpha": 0.1}, "alpha=0.1 does not apply to the 'sama'"),
        (("cg",), {"alpha": 0.1}, "alpha=0.1 does not apply to the 'cg'.*CG needs none"),
        (("neumann",), {"radius": 0.1}, "radius=0.1 does not apply"),
        (("neumann",), {"iterations": 0}, "iterations=0 .*>= 1"),
        (("cg",), {"iterations": 2.5}, "iterations=2.5"),
        (("cg",), {"iterations": True}, "iterations=True"),
        (("neumann",), {"alpha": -1.0}, "alpha=-1.0 .*> 0"),
        (("darts",), {"radius": float("nan")}, "radius=nan"),
        (("darts",), {"unroll_steps": 0}, "unroll_steps=0"),
        (("darts",), {"darts_alpha": 0.1}, "'darts_alpha' is set from the hypergradient's options"),
        (("darts",), {"darts_multitask": True}, "'darts_multitask' is not supported"),
        (("darts",), {"gradient_clip": 1.0}, "unknown Betty Config field 'gradient_clip'.*gradient_clipping"),
    ],
)
def test_config_rejects_bad_options(args, kwargs, message):
    with pytest.raises(UserError, match=message):
        hg.hypergradient_config(*args, **kwargs)


def test_needs_double_backward_rejects_unknown_names():
    with pytest.raises(UserError, match="unknown hypergradient"):
        hg.needs_double_backward("newton")


# ----------------------------------------------------------------------------------------------
# tables for docs/hypergradients.md (run this file as a script)


def _accuracy_tables():
    for label, data in (("WELL", WELL_DATA), ("MID", MID_DATA), ("ILL", ILL_DATA)):
        eigenvalues = torch.linalg.eigvalsh(exact_solution(*data)[2])
        alpha = series_alpha(data)
        exact = exact_solution(*data)[1]
        print(f"\n{label}: dim {len(data[4])}, Hessian eigenvalues {eigenvalues.min():.3g}..{eigenvalues.max():.3g}"
              f" (condition {eigenvalues.max() / eigenvalues.min():.3g}), Neumann alpha {alpha:.4f}")
        print("| iterations | neumann | cg | Betty's cg | Betty's neumann |")
        print("|---|---|---|---|---|")
        for k in (1, 3, 5, 10, 20, 50):
            row = [error_for(data, hg.hypergradient_config("neumann", iterations=k, alpha=alpha)),
                   error_for(data, hg.hypergradient_config("cg", iterations=k)),
                   error_for(data, Config(type="cg", cg_iterations=k)),
                   error_for(data, Config(type="neumann", neumann_iterations=k, neumann_alpha=alpha))]
            print(f"| {k} | " + " | ".join(f"{e:.2e}" for e in row) + " |")
        darts = hypergradient(*build(data, hg.hypergradient_config("darts-plain"))[1:])
        print(f"darts-plain: cosine {cosine(darts, exact):.5f}, relative error {relative_error(darts, exact):.3g}, "
              f"norm ratio {(darts.norm() / exact.norm()).item():.3g}")


def _time_call(upper, batch):
    begin = time.perf_counter()
    get_grads(upper.training_step(batch), upper.paths[0], retain_graph=False, do_sync=False)
    return time.perf_counter() - begin


def _tiny_bert_problems(lower_config):
    """A 2-layer BERT (random init, eager attention) with learned per-example loss weights above it."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model_config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=128, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification._from_config(model_config, attn_implementation="eager").float()
    assert model.config._attn_implementation == "eager"  # double backward (neumann, cg)
    batch_size, length = 16, 32
    train = (torch.randint(0, 1000, (batch_size, length)), torch.randint(0, 2, (batch_size,)))
    valid = (torch.randint(0, 1000, (batch_size, length)), torch.randint(0, 2, (batch_size,)))

    class Weights(ImplicitProblem):
        def training_step(self, batch):
            ids, labels = batch
            return torch.nn.functional.cross_entropy(self.classifier.module(input_ids=ids).logits, labels)

    class Classifier(ImplicitProblem):
        def training_step(self, batch):
            ids, labels = batch
            losses = torch.nn.functional.cross_entropy(self.module(input_ids=ids).logits, labels, reduction="none")
            weights = torch.softmax(self.weights.module.value, 0) * len(labels)
            return (weights * losses).mean()

    upper = Weights("weights", Config(), Vector(torch.zeros(batch_size)), None, None, [valid])
    upper.optimizer = torch.optim.Adam(upper.module.parameters(), lr=0.01)
    lower = Classifier("classifier", lower_config, model, None, None, [train])
    lower.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine = Engine(problems=[upper, lower], config=EngineConfig(train_iters=3, strategy="cpu"),
                    dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}})
    engine.run()  # a few real steps so that Adam has state (sama) and cur_batch is set
    return upper, lower, valid, train


def _timing_table(rounds=30):
    """Time per hypergradient call (upper forward + get_grads), one thread; methods interleaved
    round by round, so that load from other processes hits all of them alike; min and median."""
    torch.set_num_threads(1)
    methods = [(name, hg.hypergradient_config(name)) for name in hg.HYPERGRADIENTS]
    methods += [("Betty's darts", Config(type="darts")), ("Betty's cg (3)", Config(type="cg", cg_iterations=3))]
    setups = {}
    for label, config in methods:
        start = torch.zeros(MID["dim"], dtype=DTYPE)
        optimizer = torch.optim.Adam([torch.nn.Parameter(start)], lr=0.05)
        engine, upper, lower = build(MID_DATA, config, lower_optimizer=optimizer, upper_lr=0.0, train_iters=3)
        engine.run()  # Adam state for sama
        quadratic = (upper, (MID_DATA[2], MID_DATA[3]))
        upper, lower, valid, train = _tiny_bert_problems(config)
        setups[label] = (quadratic, (upper, valid))
    plain = lambda: torch.autograd.grad(lower.training_step(train), lower.trainable_parameters())
    times = {label: ([], []) for label in setups}
    times["plain"] = ([], [])
    for round_ in range(rounds + 2):
        for label, (quadratic, bert) in setups.items():
            quadratic_time, bert_time = _time_call(*quadratic), _time_call(*bert)
            if round_ >= 2:  # warm-up rounds
                times[label][0].append(quadratic_time)
                times[label][1].append(bert_time)
        begin = time.perf_counter()
        plain()
        if round_ >= 2:
            times["plain"][1].append(time.perf_counter() - begin)

    def summary(values, scale, digits):
        values = sorted(values)
        return f"{values[0] * scale:.{digits}f} / {values[len(values) // 2] * scale:.{digits}f}"

    print(f"\nTiming: min / median of {rounds} calls in ms, torch {torch.__version__}, 1 thread")
    print("| method (defaults) | quadratic (dim 6, float64) | tiny BERT (2 layers, batch 16 x 32 tokens) |")
    print("|---|---|---|")
    for label in setups:
        print(f"| {label} | {summary(times[label][0], 1e3, 2)} | {summary(times[label][1], 1e3, 1)} |")
    print(f"| (reference: one lower forward + backward) | | {summary(times['plain'][1], 1e3, 1)} |")


def _sama_direction_table():
    X1, y1, X2, y2, lam = WELL_DATA
    hessian = 2 * (X1.T @ X1 / len(X1) + torch.diag(lam.exp()))
    print("\nsama on WELL after k Adam steps (lr 0.05) from w = 0: cosine with the exact implicit term")
    for steps in (1, 3, 10, 30, 100):
        upper, lower, _ = adam_lower(WELL_DATA, steps=steps, lr=0.05)
        w = lower.module.value.detach()
        v = 2 * X2.T @ (X2 @ w - y2) / len(X2)
        exact_implicit = -(2 * lam.exp() * w) * torch.linalg.solve(hessian, v)
        darts = -(2 * lam.exp() * w) * v
        print(f"steps {steps}: sama {cosine(hypergradient(upper, lower), exact_implicit):.3f}, "
              f"darts-plain {cosine(darts, exact_implicit):.4f}")


def _dropout_table():
    """Tiny BERT in train mode (dropout 0.1): darts-plain against the exact -(d2L/dlam dw) v on one mask."""
    from betty.hypergradient.darts import darts as betty_darts

    upper, lower, valid, train = _tiny_bert_problems(hg.hypergradient_config("darts-plain"))
    params = lower.trainable_parameters()
    vector = torch.autograd.grad(upper.training_step(valid), params)
    results = {}
    for label, fn in (("blo_mixup darts-plain", hg.darts_plain), ("Betty's darts", betty_darts)):
        torch.manual_seed(3)
        results[label] = fn(vector, lower, upper, False)[0]
    torch.manual_seed(3)  # the mask both + passes drew
    lower_grad = torch.autograd.grad(lower.training_step(train), params, create_graph=True, allow_unused=True)
    pairs = [(g, v) for g, v in zip(lower_grad, vector) if g is not None and g.requires_grad]
    (exact,) = torch.autograd.grad([g for g, _ in pairs], [upper.module.value], grad_outputs=[v for _, v in pairs])
    print("\ntiny BERT, dropout 0.1, float32: darts-plain vs the exact identity-inverse product")
    for label, value in results.items():
        print(f"{label}: relative error {relative_error(value, -exact):.2e}, cosine {cosine(value, -exact):.4f}")


if __name__ == "__main__":
    logging.disable(logging.INFO)
    _accuracy_tables()
    _sama_direction_table()
    _dropout_table()
    _timing_table()
