"""DPS (dense, mix), guided dropout, PAC-tuning and FTFT: each one's defining computation, and a run end to end.

Unit tests check the equations of methods.md (sections 2, 3, 4, 6) on tiny models built from configs;
the smoke tests run each method through run_finetune on 16 RTE examples and load the saved model with
plain transformers.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from blo_mixup.config import RunConfig
from blo_mixup.data import get_task, load_glue
from blo_mixup.finetune import build_context, run_finetune
from blo_mixup.methods import get_method
from blo_mixup.methods import dps, ftft, guided_dropout, pac_tuning


def tiny_config(**overrides):
    return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                      max_position_embeddings=64, **overrides)


def tiny_batch(n=4, length=10, seed=0, num_labels=2):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 99, (n, length), generator=g), "attention_mask": torch.ones(n, length, dtype=torch.long),
            "labels": torch.randint(0, num_labels, (n,), generator=g)}


def run_config(glue_dir, tiny_bert_dir, out, **overrides):
    values = dict(task="rte", data_dir=str(glue_dir), model=str(tiny_bert_dir), train_size=16, epochs=1, batch_size=8,
                  max_length=32, output_dir=str(out))
    return RunConfig(**{**values, **overrides})


def context(glue_dir, tiny_bert_dir, tmp_path, method, **overrides):
    """(model, ctx) exactly as run_finetune builds them."""
    run = run_config(glue_dir, tiny_bert_dir, tmp_path / "ctx", **overrides)
    method.run = run
    return build_context(run, method, tmp_path / "ctx")


def smoke(glue_dir, tiny_bert_dir, tmp_path, name, **options):
    """One run end to end; returns results.json, after checking the saved model is plain transformers."""
    from transformers import AutoModelForSequenceClassification

    method_class = get_method(name)
    run = run_config(glue_dir, tiny_bert_dir, tmp_path / name)
    results = run_finetune(run, method_class(method_class.options_class(**options), run))
    written = json.loads((tmp_path / name / "results.json").read_text())
    assert written["method"] == name and 0 <= written["main_score"] <= 1
    model, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / name / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_labels == 2
    return results


# ------------------------------------------------------------------------------------------ DPS


def test_top_fraction_mask_keeps_exactly_the_fraction_by_score():
    score = torch.randint(0, 5, (37, 11)).float()  # many ties
    mask = dps.top_fraction_mask(score, 0.7)
    assert mask.sum().item() == math.ceil(0.7 * score.numel())
    assert score[mask.bool()].min() >= score[~mask.bool()].max()


class _DenseSpy(dps.DpsDense):
    """Records, after backward and before the optimizer step, the gradients and masks of two matrices."""

    def before_optimizer_step(self, model, step, ctx):
        names = list(self.targets)[:2]
        self.seen.append({"step": step, "stage_one": self.in_stage_one(step),
                          "grads": {n: self.targets[n].weight.grad.clone() for n in names},
                          "grad_sq": {n: self.grad_sq[n].clone() for n in names},
                          "masks": {n: self.masks[n].clone() for n in names}})


def test_dps_dense_scores_in_stage_one_and_masks_in_stage_two(glue_dir, tiny_bert_dir, tmp_path):
    method = _DenseSpy(dps.DpsOptions(dps_p=0.3, dps_update_ratio=0.25, dps_dropout=0.1))
    method.seen = []
    # 16 examples, batch 4, 2 epochs: T = 8 steps, u = 2: stages I (1-2), II (3-4), I (5-6), II (7-8).
    model, ctx = context(glue_dir, tiny_bert_dir, tmp_path, method, batch_size=4, epochs=2, max_grad_norm=0.0)
    model = method.prepare_model(model, ctx)
    assert len(method.targets) == 12 and all("layer" in n for n in method.targets)  # six per encoder layer
    method.fit(model, ctx)
    assert method.stage_length == 2 and [s["stage_one"] for s in method.seen] == [True, True, False, False] * 2
    for cycle in (0, 4):
        stage_one, stage_two = method.seen[cycle:cycle + 2], method.seen[cycle + 2:cycle + 4]
        for name in stage_one[0]["grads"]:
            # Stage I: gradients untouched, G = sum of g^2 over the stage (reset at the cycle start).
            assert all((s["grads"][name] != 0).float().mean() > 0.95 for s in stage_one)
            expected_g = sum(s["grads"][name] ** 2 for s in stage_one)
            torch.testing.assert_close(stage_one[-1]["grad_sq"][name], expected_g)
            # Stage II: one mask for the whole stage, the top 70% of G, and gradients zero outside it.
            mask = stage_two[0]["masks"][name]
            assert torch.equal(mask, stage_two[1]["masks"][name])
            assert mask.sum().item() == math.ceil(0.7 * mask.numel())
            assert torch.equal(mask, dps.top_fraction_mask(expected_g, 0.7))
            assert all(torch.all(s["grads"][name][mask == 0] == 0) for s in stage_two)
    name = next(iter(method.seen[0]["masks"]))
    assert not torch.equal(method.seen[2]["masks"][name], method.seen[6]["masks"][name])  # a new mask each cycle


def test_mixout_formula_and_mix_scores():
    w, u = torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    mixed = dps.mixout(w, u, mask, 0.3)
    torch.testing.assert_close(mixed[:, 0], (w[:, 0] - 0.3 * u[:, 0]) / 0.7)  # kept column: (W - pU) / (1 - p)
    torch.testing.assert_close(mixed[:, 1], u[:, 1])  # dropped column: (U - pU) / (1 - p) = U
    torch.testing.assert_close(0.7 * mixed[:, 0] + 0.3 * dps.mixout(w, u, 1 - mask, 0.3)[:, 0], w[:, 0])  # E[W_mix] = W
    g, f = torch.tensor([4.0, 6.0, 0.0]), torch.tensor([2.0, 3.0, 0.0])
    torch.testing.assert_close(dps.mix_scores(g, f, 10), torch.tensor([2.0, 2.0, 0.0]))
    torch.testing.assert_close(dps.mix_scores(g, f, 50), torch.tensor([2.0, 2.0, 0.0]) * torch.exp(-f / 50))


class _MixSpy(dps.DpsMix):
    def before_optimizer_step(self, model, step, ctx):
        module = next(iter(self.targets.values()))
        mix = self.mixing(module)
        original = module.parametrizations.weight.original
        self.seen.append({"step": step, "stage_one": self.in_stage_one(step), "mask": mix.mask.clone(),
                          "grad": original.grad.clone(), "grad_sq": mix.grad_sq.clone(), "count": mix.count.clone(),
                          "target": mix.target.clone(), "w": original.detach().clone(),
                          "w_eff": module.weight.detach().clone()})


def test_dps_mix_accumulates_scores_and_fixes_the_top_mask(glue_dir, tiny_bert_dir, tmp_path):
    p = 0.3
    method = _MixSpy(dps.DpsOptions(dps_p=p, dps_update_ratio=0.25))
    method.seen = []
    model, ctx = context(glue_dir, tiny_bert_dir, tmp_path, method, batch_size=4, epochs=1.5, max_grad_norm=0.0)
    module = next(iter(method.prepare_model(model, ctx) and dps.encoder_linears(model).values()))
    pretrained = module.parametrizations.weight.original.detach().clone()
    method.fit(model, ctx)  # T = 6, u = 1: stages I, II, I, II, I, II
    one, two = method.seen[0], method.seen[1]
    assert one["stage_one"] and not two["stage_one"] and one["mask"].shape == (1, pretrained.shape[1])
    # Stage I: mixout towards the pretrained weights; dropped columns get no gradient; G += (g*M)^2, F += M.
    torch.testing.assert_close(one["target"], pretrained)
    assert torch.all(one["grad"][:, one["mask"][0] == 0] == 0)
    torch.testing.assert_close(one["grad_sq"], (one["grad"] * (1 - p)) ** 2)
    torch.testing.assert_close(one["count"], one["mask"].expand_as(one["count"]))
    # Stage II: the fixed mask is the top (1 - p) of S = G / max(F, 1); mixout towards W at the stage start.
    assert torch.equal(two["mask"], dps.top_fraction_mask(dps.mix_scores(one["grad_sq"], one["count"], 1), 1 - p))
    assert two["mask"].sum().item() == math.ceil((1 - p) * two["mask"].numel())
    torch.testing.assert_close(two["w_eff"], dps.mixout(two["w"], two["target"], two["mask"], p))
    assert torch.all(two["grad"][two["mask"] == 0] == 0)
    # The saved model is plain nn.Linear weights equal to what the last stage evaluates with.
    last = method.seen[-1]
    expected = dps.mixout(module.parametrizations.weight.original.detach(), last["target"], last["mask"], p)
    method.finalize_model(model)
    assert not hasattr(module, "parametrizations")
    torch.testing.assert_close(module.weight.detach(), expected)
    assert not any("parametrizations" in k for k in model.state_dict())


def test_dps_rejects_out_of_range_options():
    from blo_mixup.errors import UserError

    with pytest.raises(UserError, match="--dps-p"):
        dps.DpsDense(dps.DpsOptions(dps_p=1.0))
    with pytest.raises(UserError, match="--dps-update-ratio"):
        dps.DpsMix(dps.DpsOptions(dps_update_ratio=0.0))


@pytest.mark.parametrize("name", ["dps-dense", "dps-mix"])
def test_dps_runs_end_to_end(glue_dir, tiny_bert_dir, tmp_path, name):
    results = smoke(glue_dir, tiny_bert_dir, tmp_path, name, dps_update_ratio=0.5)
    assert results["dps"]["stage_length"] == 1 and results["dps"]["matrices"] == 12


# ------------------------------------------------------------------------------------------ guided dropout


def test_guided_dropout_rates_are_linear_in_fisher_rank():
    scores = {f"site{i}": s for i, s in enumerate([0.3, 5.0, 0.01, 2.0, 0.7])}
    rates = guided_dropout.dropout_rates(scores, p_upper=0.1, p_lower=0.0)
    order = sorted(scores, key=scores.get)
    assert rates[order[0]] == pytest.approx(0.1) and rates[order[-1]] == pytest.approx(0.0)
    np.testing.assert_allclose([rates[s] for s in order], np.linspace(0.1, 0.0, len(order)), atol=1e-12)


def test_guided_dropout_sites_by_name_and_attention_dropout_takes_effect():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())  # the default (sdpa) attention implementation
    sites = {s.name: s for s in guided_dropout.dropout_sites(model.bert)}
    expected = {"embeddings.dropout"} | {f"encoder.layer.{i}.{part}" for i in range(2) for part in
                                         ("attention.self.dropout", "attention.output.dropout", "output.dropout")}
    assert set(sites) == expected
    assert sites["embeddings.dropout"].params == ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                                                 "embeddings.token_type_embeddings.weight"]
    assert sorted(sites["encoder.layer.1.attention.self.dropout"].params) == sorted(
        f"encoder.layer.1.attention.self.{m}.{t}" for m in ("query", "key", "value") for t in ("weight", "bias"))
    assert sorted(sites["encoder.layer.0.output.dropout"].params) == sorted(
        f"encoder.layer.0.output.{m}.{t}" for m in ("dense", "LayerNorm") for t in ("weight", "bias"))
    rates = {name: 0.01 * (i + 1) for i, name in enumerate(sorted(expected))}
    guided_dropout.apply_rates(model, rates, classifier_rate=0.1)
    bert = model.bert
    assert bert.embeddings.dropout.p == rates["embeddings.dropout"]
    for i in range(2):
        layer = bert.encoder.layer[i]
        assert layer.attention.self.dropout.p == rates[f"encoder.layer.{i}.attention.self.dropout"]
        assert layer.attention.output.dropout.p == rates[f"encoder.layer.{i}.attention.output.dropout"]
        assert layer.output.dropout.p == rates[f"encoder.layer.{i}.output.dropout"]
    assert model.dropout.p == 0.1 and model.config.classifier_dropout == 0.1
    # The attention-probs rate reaches the attention implementation: it alone makes training mode random.
    batch = {k: v for k, v in tiny_batch().items() if k != "labels"}
    only_attention = {name: 0.0 for name in expected} | {"encoder.layer.0.attention.self.dropout": 0.5}
    guided_dropout.apply_rates(model, only_attention, classifier_rate=0.0)
    model.eval()
    reference = model(**batch).logits
    model.train()
    assert not torch.allclose(model(**batch).logits, reference)
    guided_dropout.apply_rates(model, {name: 0.0 for name in expected}, classifier_rate=0.0)
    torch.testing.assert_close(model(**batch).logits, reference)


def test_empirical_fisher_is_the_mean_squared_gradient_and_scores_average_it():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config())
    examples = []
    for seed in range(3):
        batch = tiny_batch(n=1, seed=seed)
        labels = torch.full_like(batch["input_ids"], -100)
        labels[0, 2:4] = batch["input_ids"][0, 2:4]
        examples.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels})
    fisher = guided_dropout.empirical_fisher(model, examples, torch.device("cpu"), guided_dropout.masked_lm_loss)
    model.eval()
    for example in examples:  # the MLM loss on the masked rows only equals the model's own MLM loss
        torch.testing.assert_close(guided_dropout.masked_lm_loss(model, example), model(**example).loss)
    squares = []
    for example in examples:
        model.zero_grad()
        model(**example).loss.backward()
        squares.append({n: p.grad.clone() ** 2 for n, p in model.bert.named_parameters()})
    for name in ("encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"):
        torch.testing.assert_close(fisher[name], sum(s[name] for s in squares) / 3)
    site = next(s for s in guided_dropout.dropout_sites(model.bert) if s.name == "encoder.layer.1.attention.self.dropout")
    score = guided_dropout.site_scores_from_fisher([site], fisher)[site.name]
    manual = sum(fisher[n].sum() for n in site.params) / sum(fisher[n].numel() for n in site.params)
    assert score == pytest.approx(manual.item(), rel=1e-6)


def test_guided_dropout_cache_is_written_then_reused(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    options = guided_dropout.GuidedDropoutOptions(gd_cache_dir=str(tmp_path / "cache"))
    method = guided_dropout.GuidedDropout(options)
    model, ctx = context(glue_dir, tiny_bert_dir, tmp_path, method)
    scores, info = guided_dropout.cached_site_scores(model, ctx, options)
    assert not info["cache_hit"] and info["fisher_head"] == "tied-mlm"  # the tiny checkpoint has no MLM head
    assert len(scores) == 7 and all(s > 0 for s in scores.values())
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("the Fisher was recomputed although it is cached")

    monkeypatch.setattr(guided_dropout, "compute_site_scores", must_not_run)
    again, info = guided_dropout.cached_site_scores(model, ctx, options)
    assert info["cache_hit"] and again == scores
    with pytest.raises(AssertionError, match="recomputed"):  # --gd-recompute does recompute
        guided_dropout.cached_site_scores(model, ctx, guided_dropout.GuidedDropoutOptions(
            gd_cache_dir=str(tmp_path / "cache"), gd_recompute=True))


def test_guided_dropout_runs_end_to_end(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BLO_MIXUP_CACHE", str(tmp_path / "cache"))
    results = smoke(glue_dir, tiny_bert_dir, tmp_path, "guided-dropout")
    rates = results["guided_dropout"]["rates"]
    assert len(rates) == 7 and max(rates.values()) == pytest.approx(0.1) and min(rates.values()) == pytest.approx(0.0)
    assert list((tmp_path / "cache" / "guided_dropout").glob("*.json"))


# ------------------------------------------------------------------------------------------ PAC-tuning


def test_pac_kl_is_the_closed_form():
    torch.manual_seed(0)
    shapes = [(3, 4), (5,)]
    theta = [torch.randn(s) for s in shapes]
    theta0 = [torch.randn(s) for s in shapes]
    xi = [torch.randn(s) * 0.3 - 2 for s in shapes]
    b = torch.tensor([-1.5, -2.5])
    kl = pac_tuning.pac_kl(theta, theta0, xi, b)
    by_hand = 0.0
    for l, (t, t0, x) in enumerate(zip(theta, theta0, xi)):
        sigma2, lam = torch.exp(2 * x), torch.exp(2 * b[l])
        by_hand += 0.5 * (sigma2 / lam + (t - t0) ** 2 / lam - 1 + torch.log(lam / sigma2)).sum()
    torch.testing.assert_close(kl, by_hand)
    from torch.distributions import Normal, kl_divergence

    library = sum(kl_divergence(Normal(t, torch.exp(x)), Normal(t0, torch.exp(b[l]))).sum()
                  for l, (t, t0, x) in enumerate(zip(theta, theta0, xi)))
    torch.testing.assert_close(kl, library)


def test_pac_k_estimate_and_table():
    losses = torch.tensor([[0.5, 0.9, 0.7], [0.6, 1.2, 0.4]], dtype=torch.float64)
    k = pac_tuning.k_from_losses(losses, 10.0)
    bound = torch.exp(10.0 * (losses.mean() - losses)).mean().item()
    assert math.exp(3 * 100 * k ** 2 / 2) == pytest.approx(bound, rel=1e-9)  # the smallest K that satisfies it
    scales, ks = [0.1, 0.2, 0.4, 0.8], [1.0, 2.0, 2.0, 5.0]
    for s, expected in zip(scales, ks):
        assert pac_tuning.k_at(torch.tensor(s), scales, ks).item() == pytest.approx(expected)
    assert pac_tuning.k_at(torch.tensor(0.05), scales, ks).item() == pytest.approx(1.0)
    assert pac_tuning.k_at(torch.tensor(0.3), scales, ks).item() == pytest.approx(2.0)
    assert pac_tuning.k_at(torch.tensor(1.6), scales, ks).item() == pytest.approx(5.0 + 3.0 / 0.4 * 0.8)


def test_pac_stage_two_freezes_noise_and_prior_while_theta_moves():
    """PAC-tuning's hooks in the shared loop's step (training.training_step): stage 1 learns theta, xi and
    b; from step stage1_steps + 1 on, xi and b stay put while theta moves, for one batch or a full batch."""
    from types import SimpleNamespace

    from blo_mixup.training import Optimization, training_step

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    method = pac_tuning.PacTuning()
    method.prepare_model(model, None)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "embed" in n)
    trainer = pac_tuning.PacTrainer(model, n_examples=8, gamma=10.0, k_scales=pac_tuning.PRIOR_SCALES,
                                    k_values=[0.01 * i for i in range(1, 9)], backbone_lr=5e-5, head_lr=1e-2,
                                    noise_lr=0.1, weight_decay=0.01)
    assert trainer.kl().item() == pytest.approx(0.0, abs=1e-3)  # prior = posterior scale at the start
    method.trainer, method.stage1_steps, method.after_stage1 = trainer, 2, None
    ctx = SimpleNamespace(run=SimpleNamespace(skip_nonfinite=0))
    opt = Optimization.build(model, method, ctx, lr=1e-5, total_steps=4, max_grad_norm=0.0)
    assert opt.scheduler is None and len(opt.optimizers) == 2
    batches = [tiny_batch(seed=1), tiny_batch(seed=2)]

    def snapshot():
        return ([x.detach().clone() for x in trainer.xi], trainer.b.detach().clone(), [t.detach().clone() for t in trainer.theta])

    xi0, b0, _ = snapshot()
    training_step(model, method, ctx, batches[0], 1, opt)
    training_step(model, method, ctx, batches[1], 2, opt)
    xi1, b1, theta1 = snapshot()
    assert not torch.equal(b0, b1) and any(not torch.equal(a, c) for a, c in zip(xi0, xi1))  # stage 1 learns them
    training_step(model, method, ctx, batches, 3, opt)  # a full-batch step made of two chunks
    training_step(model, method, ctx, batches[0], 4, opt)
    xi2, b2, theta2 = snapshot()
    assert torch.equal(b1, b2) and all(torch.equal(a, c) for a, c in zip(xi1, xi2))
    assert any(not torch.equal(a, c) for a, c in zip(theta1, theta2))
    assert method.after_stage1 is not None


def test_pac_full_batch_step_is_the_whole_batchs_gradient():
    """Chunks weighted by their rows add up to the gradient of the loss of all their rows at once."""
    from types import SimpleNamespace

    from blo_mixup.training import backward_chunks

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    method = get_method("vanilla")()
    whole = tiny_batch(n=7, seed=3)
    chunks = [{k: v[:4] for k, v in whole.items()}, {k: v[4:] for k, v in whole.items()}]
    loss = backward_chunks(model, method, SimpleNamespace(), chunks)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    expected = model(**whole).loss
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for g, p in zip(grads, [p for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_pac_tuning_runs_end_to_end(glue_dir, tiny_bert_dir, tmp_path):
    results = smoke(glue_dir, tiny_bert_dir, tmp_path, "pac-tuning", pac_epochs=2, pac_k_models=2, pac_k_examples=8)
    pac = results["pac"]
    assert pac["stage1_steps"] == 3 and pac["stage2_steps"] == 1 and len(pac["k_values"]) == 8
    assert pac["k_values"] == sorted(pac["k_values"])


# ------------------------------------------------------------------------------------------ FTFT


def test_ftft_selects_exactly_the_most_variable_third_ties_by_id():
    rng = np.random.default_rng(0)
    ids = list(range(100, 130))
    variability = rng.integers(0, 6, 30) / 10  # many ties
    confidence = rng.random(30)
    chosen = ftft.select_examples(ids, confidence, variability, "ambiguous", 0.33, seed=1)
    assert len(chosen) == 10
    expected = sorted(ids, key=lambda i: (-variability[i - 100], i))[:10]
    assert chosen == sorted(expected)
    hard = ftft.select_examples(ids, confidence, variability, "hard-to-learn", 0.33, seed=1)
    assert hard == sorted(sorted(ids, key=lambda i: confidence[i - 100])[:10])
    assert len(ftft.select_examples(ids, confidence, variability, "random", 0.33, seed=1)) == 10


def test_ftft_data_map_and_gold_probability():
    ids, confidence, variability = ftft.data_map({7: [0.2, 0.4, 0.9], 3: [0.5, 0.5, 0.5]})
    assert ids == [3, 7]
    np.testing.assert_allclose(confidence, [0.5, 0.5])
    np.testing.assert_allclose(variability, [0.0, np.std([0.2, 0.4, 0.9], ddof=1)])
    logits, labels = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])
    assert ftft.gold_probability(logits, labels, regression=False).item() == pytest.approx(0.75)
    assert ftft.gold_probability(torch.tensor([[2.0]]), torch.tensor([4.0]), regression=True).item() == pytest.approx(math.exp(-2))


def test_ftft_early_stopping_stops_after_patience_and_restores_the_best(glue_dir, tiny_bert_dir, tmp_path, monkeypatch):
    stopper = ftft.EarlyStopping(2)
    assert [stopper.update(s, i) for i, s in enumerate([0.5, 0.7, 0.7, 0.6])] == [True, True, False, False]
    assert stopper.should_stop and stopper.best_step == 1
    method = ftft.Ftft()
    model, ctx = context(glue_dir, tiny_bert_dir, tmp_path, method, batch_size=4)
    scores, states = iter([0.5, 0.7, 0.65, 0.7, 0.9, 0.9]), []

    def fake_score(model, ctx, data):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(ftft, "holdout_score", fake_score)
    stats = ftft.train_with_early_stopping(model, method, ctx, ctx.train, ctx.train, max_steps=20, eval_every=1,
                                           patience=2, lr=1e-3)
    assert stats["steps"] == 4 and stats["stopped_early"] and stats["best_step"] == 2
    assert len(stats["evaluations"]) == 4
    for key, value in model.state_dict().items():  # the weights of the best evaluation are kept
        torch.testing.assert_close(value, states[1][key])


def test_ftft_runs_end_to_end(glue_dir, tiny_bert_dir, tmp_path):
    results = smoke(glue_dir, tiny_bert_dir, tmp_path, "ftft")
    stats = results["ftft"]
    assert stats["selected"] == 5 and stats["pool"] == 16 and stats["holdout_size"] == 11
    assert stats["reference"]["epochs"] == 2 and stats["selected_mean_variability"] >= stats["mean_variability"]
    # the data map: every pool example once, the selected ones the most variable, labels counted right
    table = pd.read_csv(tmp_path / "ftft" / stats["data_map"])
    assert len(table) == 16 and table["idx"].is_unique
    assert table["selected"].sum() == 5 and table["held_out"].sum() == 11 and not (table["selected"] & table["held_out"]).any()
    assert table.loc[table["selected"] == 1, "variability"].min() >= table.loc[table["selected"] == 0, "variability"].max()
    assert table.loc[table["selected"] == 1, "label"].value_counts().to_dict() == {k: v for k, v in stats["selected_label_counts"].items() if v}
    assert sum(stats["selected_label_counts"].values()) == 5
    assert_rows_are_their_examples(table, glue_dir)


def assert_rows_are_their_examples(table, glue_dir):
    """Each row of a data map holds the text and label of the RTE training example its idx names."""
    train = load_glue("rte", glue_dir)["train"]
    source = {int(i): (a, b, y) for i, a, b, y in zip(train["idx"], train["sentence1"], train["sentence2"], train["label"])}
    names = get_task("rte").label_names
    for i, a, b, y in zip(table["idx"], table["sentence1"], table["sentence2"], table["label"]):
        assert (a, b, y) == (source[i][0], source[i][1], names[source[i][2]])


def test_ftft_data_map_with_a_held_out_split(glue_dir, tiny_bert_dir, tmp_path):
    """With --ftft-holdout split the pool is a shuffled part of the subsample: rows must still line up."""
    stats = smoke(glue_dir, tiny_bert_dir, tmp_path, "ftft", ftft_holdout="split", ftft_holdout_ratio=0.25)["ftft"]
    table = pd.read_csv(tmp_path / "ftft" / stats["data_map"])
    assert len(table) == stats["pool"] == 12 and table["selected"].sum() == stats["selected"]
    assert table["held_out"].sum() == 0  # the held-out split had no reference run, so it is not in the map
    assert_rows_are_their_examples(table, glue_dir)
