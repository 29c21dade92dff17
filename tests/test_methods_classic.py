"""The classic baselines (Mixout, Child-Tuning D/F, R-Drop, R3F, Re-init + LLRD) against their equations,
on a tiny BERT built from a config, plus one end-to-end run of each through run_finetune."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from blo_mixup.errors import UserError
from blo_mixup.methods import get_method
from blo_mixup.methods.child_tuning import ChildTuningOptions, fisher_information, top_fraction_masks
from blo_mixup.methods.mixout import MixoutOptions, MixoutWeight
from blo_mixup.methods.r3f import R3FOptions, r3f_penalty
from blo_mixup.methods.rdrop import RDropOptions, rdrop_loss
from blo_mixup.methods.reinit import ReinitOptions, encoder_layers

NUM_LAYERS = 3


def tiny_model(dropout: float = 0.1, num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
                        intermediate_size=37, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        num_labels=num_labels,
                        problem_type="regression" if num_labels == 1 else "single_label_classification")
    return BertForSequenceClassification(config)


def pretend_pretrained(model, seed: int = 1):
    """Perturb every parameter so no value sits at its fresh-init constant (LayerNorm 1/0, zero biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def tiny_batch(batch_size: int = 4, length: int = 9, seed: int = 0, regression: bool = False):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.rand(batch_size, generator=generator) if regression else torch.randint(0, 2, (batch_size,), generator=generator)
    return {
        "input_ids": torch.randint(1, 99, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": labels,
        "idx": torch.arange(batch_size),
    }


def plain_inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("idx", "labels")}


# --- Mixout ---------------------------------------------------------------------------------------


def test_mixout_weight_is_unbiased_and_mixes_whole_input_columns():
    torch.manual_seed(0)
    w0, w = torch.randn(4, 6), torch.randn(4, 6)
    p = 0.7
    mix = MixoutWeight(w0, p).train()
    scaled = w0 + (w - w0) / (1 - p)  # a kept column's value
    draws = torch.stack([mix(w) for _ in range(20000)])
    for draw in draws[:50]:
        for j in range(6):  # every column is either W0's (dropped) or the rescaled W's (kept)
            assert torch.allclose(draw[:, j], w0[:, j]) or torch.allclose(draw[:, j], scaled[:, j], atol=1e-6)
    kept = torch.isclose(draws[:, 0, :], scaled[0]).float().mean()
    assert abs(kept - (1 - p)) < 0.02
    assert torch.allclose(draws.mean(0), w, atol=0.06), "E[W_mix] must equal W"
    assert torch.equal(mix.eval()(w), w), "evaluation uses W itself"


def test_mixout_targets_encoder_and_eval_output_equals_the_plain_model():
    model = tiny_model()
    method = get_method("mixout")(MixoutOptions(mixout_p=0.5))
    method.prepare_model(model)
    from torch.nn.utils import parametrize

    assert parametrize.is_parametrized(model.bert.encoder.layer[0].attention.self.query, "weight")
    assert parametrize.is_parametrized(model.bert.pooler.dense, "weight")
    assert not parametrize.is_parametrized(model.classifier, "weight"), "the new head has no W0 to mix towards"
    assert model.bert.encoder.layer[0].output.dropout.p == 0.0 and model.dropout.p == 0.1
    # One training step moves W away from W0; a training forward differs from W's, evaluation does not.
    batch = tiny_batch()
    model.train()
    model(**{k: v for k, v in batch.items() if k != "idx"}).loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param.sub_(0.5 * param.grad)
    model.eval()
    with torch.no_grad():
        wrapped_eval = model(**plain_inputs(batch)).logits
        model.train()
        wrapped_train = model(**plain_inputs(batch)).logits
    plain = method.finalize_model(model).eval()
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert set(plain.state_dict()) == set(tiny_model().state_dict()), "the finalized model is a plain BERT"
    with torch.no_grad():
        assert torch.allclose(plain(**plain_inputs(batch)).logits, wrapped_eval, atol=1e-6)
        assert not torch.allclose(plain(**plain_inputs(batch)).logits, wrapped_train, atol=1e-4)


# --- Child-Tuning ---------------------------------------------------------------------------------


def loss_of(model, batch):
    return model(**{k: v for k, v in batch.items() if k != "idx"}).loss


def test_child_tuning_d_fisher_and_top_fraction_mask():
    model = pretend_pretrained(tiny_model(dropout=0.0))
    batches = [tiny_batch(seed=s) for s in range(3)]
    fisher = fisher_information(model, batches, loss_of)
    query = model.bert.encoder.layer[1].attention.self.query.weight
    by_hand = torch.zeros_like(query)
    for batch in batches:
        by_hand += torch.autograd.grad(loss_of(model, batch), query)[0] ** 2 / len(batches)
    assert torch.allclose(fisher[query], by_hand, rtol=1e-4, atol=1e-12)
    assert set(map(id, fisher)) == {id(p) for p in encoder_layers(model).parameters()}, "Fisher covers the layer stack only"

    method = get_method("child-tuning-d")(ChildTuningOptions(child_reserve_p=0.3))
    masks = method.compute_masks(model, batches, loss_of)
    scores = torch.cat([fisher[p].flatten() for p in masks])
    kept = torch.cat([masks[p].flatten() for p in masks])
    assert kept.sum() == math.ceil(0.3 * scores.numel())  # no ties among random Fisher values
    assert scores[kept].min() >= scores[~kept].max(), "the kept entries are exactly the top fraction by Fisher"


def test_top_fraction_threshold_is_global_and_keeps_ties():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    masks = top_fraction_masks({a: torch.tensor([5.0, 1.0]), b: torch.tensor([4.0, 2.0, 3.0])}, 0.4)
    assert masks[a].tolist() == [True, False] and masks[b].tolist() == [True, False, False]  # top 2 of 5, across tensors
    tied = top_fraction_masks({a: torch.tensor([1.0, 1.0]), b: torch.tensor([1.0, 0.0, 0.0])}, 0.4)
    assert tied[a].tolist() == [True, True] and tied[b].tolist() == [True, False, False]


def test_child_tuning_d_leaves_masked_entries_unchanged():
    model = pretend_pretrained(tiny_model(dropout=0.0))
    method = get_method("child-tuning-d")(ChildTuningOptions(child_reserve_p=0.3))
    masks = method.compute_masks(model, [tiny_batch(seed=s) for s in range(2)], loss_of)
    before = {p: p.detach().clone() for p in masks}
    head_before = model.classifier.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(3):  # several steps: no momentum may leak into masked entries
        loss_of(model, tiny_batch(seed=10 + step)).backward()
        method.before_optimizer_step(model, step, None)
        optimizer.step()
        optimizer.zero_grad()
    for param, mask in masks.items():
        assert torch.equal(param.detach()[~mask], before[param][~mask])
    moved = sum(int((p.detach() != before[p])[m].sum()) for p, m in masks.items())
    assert moved > 0.9 * sum(int(m.sum()) for m in masks.values())
    assert not torch.equal(model.classifier.weight, head_before), "the head is always updated"


def test_child_tuning_f_masked_gradient_is_unbiased():
    model = tiny_model()
    method = get_method("child-tuning-f")(ChildTuningOptions(child_reserve_p=0.3))
    method.prepare_model(model)
    param = model.bert.encoder.layer[0].intermediate.dense.weight
    torch.manual_seed(0)
    grad = torch.randn_like(param)
    head_grad = torch.randn_like(model.classifier.weight)
    total, draws = torch.zeros_like(grad), 2000
    for step in range(draws):
        for p in model.parameters():
            p.grad = None
        param.grad = grad.clone()
        model.classifier.weight.grad = head_grad.clone()
        method.before_optimizer_step(model, step, None)
        total += param.grad
    last = param.grad
    assert torch.all(torch.isclose(last, torch.zeros_like(last)) | torch.isclose(last, grad / 0.3))
    assert abs((last != 0).float().mean() - 0.3) < 0.03
    assert torch.norm(total / draws - grad) / torch.norm(grad) < 0.08, "E[masked grad] must equal the gradient"
    assert torch.equal(model.classifier.weight.grad, head_grad), "the head's gradient is not masked"


# --- R-Drop ---------------------------------------------------------------------------------------


def test_rdrop_loss_matches_the_formula_by_hand():
    logits1 = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.3, 2.0]])
    logits2 = torch.tensor([[0.4, 0.1, -0.3], [1.0, -1.0, 0.5]])
    labels = torch.tensor([0, 2])
    alpha = 0.5
    expected = 0.0
    for i in range(2):
        p = [math.exp(v) / sum(math.exp(u) for u in logits1[i].tolist()) for v in logits1[i].tolist()]
        q = [math.exp(v) / sum(math.exp(u) for u in logits2[i].tolist()) for v in logits2[i].tolist()]
        ce = -math.log(p[labels[i]]) - math.log(q[labels[i]])
        kl_pq = sum(a * math.log(a / b) for a, b in zip(p, q))
        kl_qp = sum(b * math.log(b / a) for a, b in zip(p, q))
        expected += (ce + alpha * (kl_pq + kl_qp) / 2) / 2
    assert rdrop_loss(logits1, logits2, labels, alpha).item() == pytest.approx(expected, rel=1e-5)
    y1, y2, target = torch.tensor([[0.5], [2.0]]), torch.tensor([[1.0], [1.5]]), torch.tensor([0.0, 2.0])
    by_hand = ((0.25 + 1.0 + 2 * (0.25)) + (0.0 + 0.25 + 2 * 0.25)) / 2
    assert rdrop_loss(y1, y2, target, 2.0, regression=True).item() == pytest.approx(by_hand)


def test_rdrop_without_dropout_is_twice_the_task_loss():
    batch = tiny_batch()
    method = get_method("r-drop")(RDropOptions(rdrop_alpha=1.0))
    model = tiny_model(dropout=0.0).train()
    assert method.loss(model, batch, None).item() == pytest.approx(2 * loss_of(model, batch).item(), rel=1e-5)
    noisy = tiny_model(dropout=0.3).train()
    torch.manual_seed(0)
    assert method.loss(noisy, batch, None).item() != pytest.approx(2 * loss_of(noisy, batch).item(), rel=1e-3)


# --- R3F ------------------------------------------------------------------------------------------


def test_r3f_penalty_matches_symmetric_kl_by_hand():
    clean = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    noisy = torch.tensor([[1.5, 0.5], [0.0, 0.0]])
    expected = 0.0
    for i in range(2):
        p = F.softmax(clean[i], -1).tolist()
        q = F.softmax(noisy[i], -1).tolist()
        expected += sum(a * math.log(a / b) + b * math.log(b / a) for a, b in zip(p, q)) / 2
    assert r3f_penalty(clean, noisy).item() == pytest.approx(expected, rel=1e-5)
    assert r3f_penalty(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5], [0.0]]), regression=True).item() == pytest.approx(0.25)


def test_r3f_zero_noise_adds_nothing_and_noise_adds_a_penalty():
    batch = tiny_batch()
    model = tiny_model(dropout=0.0).train()
    plain = loss_of(model, batch).item()
    no_noise = get_method("r3f")(R3FOptions(r3f_lambda=1.0, r3f_eps=0.0))
    assert no_noise.loss(model, batch).item() == pytest.approx(plain, rel=1e-6)
    for kind in ("normal", "uniform"):
        loud = get_method("r3f")(R3FOptions(r3f_lambda=5.0, r3f_eps=1.0, r3f_noise=kind))
        torch.manual_seed(3)
        loss = loud.loss(model, batch).item()
        # The same noise by hand: z ~ N(0, 1) or U(-1, 1) added to the word-embedding lookup.
        torch.manual_seed(3)
        embeds = model.bert.embeddings.word_embeddings(batch["input_ids"])
        noise = torch.randn_like(embeds) if kind == "normal" else torch.rand_like(embeds) * 2 - 1
        with torch.no_grad():
            clean = model(**plain_inputs(batch)).logits
            noisy = model(inputs_embeds=embeds + noise, attention_mask=batch["attention_mask"]).logits
        sym_kl = (F.kl_div(F.log_softmax(noisy, -1), F.softmax(clean, -1), reduction="batchmean")
                  + F.kl_div(F.log_softmax(clean, -1), F.softmax(noisy, -1), reduction="batchmean"))
        assert sym_kl > 0
        assert loss == pytest.approx(plain + 5.0 * sym_kl.item(), rel=1e-5)
    regression = tiny_model(dropout=0.0, num_labels=1).train()
    rbatch = tiny_batch(regression=True)
    assert no_noise.loss(regression, rbatch).item() == pytest.approx(loss_of(regression, rbatch).item(), rel=1e-6)


# --- Re-init + LLRD -------------------------------------------------------------------------------


def test_reinit_changes_exactly_the_top_layers_and_pooler():
    model = pretend_pretrained(tiny_model())
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(0)
    get_method("reinit-llrd")(ReinitOptions(reinit_layers=2)).prepare_model(model, None)
    after = model.state_dict()
    top = {f"bert.encoder.layer.{i}." for i in (1, 2)} | {"bert.pooler."}
    for name, value in after.items():
        if any(name.startswith(prefix) for prefix in top):
            assert not torch.equal(value, before[name]), name
            if name.endswith("LayerNorm.weight"):
                assert torch.all(value == 1)
            elif name.endswith("bias"):
                assert torch.all(value == 0)
            else:
                assert abs(value.std().item() - 0.02) < 0.006, name  # N(0, initializer_range)
        else:
            assert torch.equal(value, before[name]), f"{name} must be bitwise unchanged"


def test_llrd_param_groups_follow_eta_xi_power():
    model = tiny_model()
    method = get_method("reinit-llrd")(ReinitOptions(llrd_decay=0.5))
    ctx = SimpleNamespace(run=SimpleNamespace(weight_decay=0.01))
    groups = method.param_groups(model, ctx, lr=1.0)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        if name.startswith("bert.embeddings."):
            expected = 0.5 ** NUM_LAYERS
        elif name.startswith("bert.encoder.layer."):
            layer = int(name.split(".")[3]) + 1  # l = 1 .. L
            expected = 0.5 ** (NUM_LAYERS - layer)
        else:  # pooler and classifier head: the full rate
            expected = 1.0
        lr, decay = lr_of[id(param)]
        assert lr == pytest.approx(expected), name
        assert decay == (0.0 if name.endswith("bias") or "LayerNorm" in name else 0.01), name


def test_reinit_needs_a_layer_stack():
    with pytest.raises(UserError, match="transformer layers"):
        encoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match="--reinit-layers"):
        get_method("reinit-llrd")(ReinitOptions(reinit_layers=NUM_LAYERS + 1)).prepare_model(tiny_model(), None)


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options, flag", [
    ("mixout", MixoutOptions(mixout_p=1.0), "--mixout-p"),
    ("mixout", MixoutOptions(mixout_p=-0.1), "--mixout-p"),
    ("child-tuning-d", ChildTuningOptions(child_reserve_p=0.0), "--child-reserve-p"),
    ("child-tuning-f", ChildTuningOptions(child_reserve_p=1.5), "--child-reserve-p"),
    ("r-drop", RDropOptions(rdrop_alpha=-1.0), "--rdrop-alpha"),
    ("r3f", R3FOptions(r3f_lambda=-1.0), "--r3f-lambda"),
    ("r3f", R3FOptions(r3f_eps=-1.0), "--r3f-eps"),
    ("r3f", R3FOptions(r3f_noise="gaussian"), "--r3f-noise"),
    ("reinit-llrd", ReinitOptions(reinit_layers=-1), "--reinit-layers"),
    ("reinit-llrd", ReinitOptions(llrd_decay=0.0), "--llrd-decay"),
])
def test_bad_options_are_one_line_user_errors(name, options, flag):
    with pytest.raises(UserError, match=flag) as error:
        get_method(name)(options)
    assert "\n" not in str(error.value)


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mixout", "child-tuning-d", "child-tuning-f", "r-drop", "r3f", "reinit-llrd"])
def test_end_to_end_run_saves_a_plain_model(name, glue_dir, tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from blo_mixup.config import RunConfig
    from blo_mixup.finetune import run_finetune

    out = tmp_path / name
    run = RunConfig(task="rte", data_dir=str(glue_dir), model=str(tiny_bert_dir), method=name, train_size=16, epochs=1,
                    batch_size=8, max_length=32, output_dir=str(out), save_model=True)
    method_class = get_method(name)
    results = run_finetune(run, method_class(method_class.options_class(), run))
    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == name == results["method"] and 0 <= saved["main_score"] <= 1
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 2
    assert not any("parametrizations" in key or "w0" in key for key in model.state_dict())
