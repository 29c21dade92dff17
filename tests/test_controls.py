"""The controls for a learned attention (methods/interpolate.py; docs/method.md, "What a fixed attention
is"): a frozen attention is a learning-rate scale under AdamW, exactly where the conditions hold;
`interpolate` at the grid {1} and `fixed-attention` at c = 1 are plain fine-tuning; alpha is chosen on D2."""

import csv
import shutil

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from blo_mixup.blo.mixup import target_module_names
from blo_mixup.config import RunConfig
from blo_mixup.data import split_two
from blo_mixup.errors import UserError
from blo_mixup.finetune import finetune_with_model
from blo_mixup.methods import Method, get_method
from blo_mixup.methods.interpolate import attach_scalar_attention, parse_alphas
from blo_mixup.training import train_loop

# --- a frozen attention is a learning-rate scale ---------------------------------------------------

C, LR, STEPS = 0.6, 1e-2, 6


def tiny_model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config).double()
    # Rows of the embeddings that a batch does not use get a gradient of exactly 0, and Adam with eps 0
    # divides 0 by 0 there; frozen, they take no part.
    model.bert.embeddings.requires_grad_(False)
    return model


def batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 40, (4, 10), generator=generator), torch.randint(0, 2, (4,), generator=generator))
            for _ in range(STEPS)]


def train(model, groups, clip=None, **adamw):
    """AdamW steps on fixed batches; after each, the weights the model computes with (W_eff where mixed)."""
    optimizer = torch.optim.AdamW(groups, **adamw)
    trajectory = []
    for input_ids, labels in batches():
        optimizer.zero_grad()
        model(input_ids=input_ids, labels=labels).loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], clip)
        optimizer.step()
        with torch.no_grad():  # module.weight is W_eff under the parametrization
            trajectory.append({name: module.weight.clone() for name, module in model.named_modules()
                               if isinstance(module, torch.nn.Linear)})
    return trajectory


def largest_gap(clip=None, **adamw):
    """Train through W0 + C * (W - W0) with C frozen, and plainly with the mixed matrices at C * LR; the
    largest difference of the weights used, over all steps and Linear layers."""
    mixed = tiny_model()
    attach_scalar_attention(mixed, C)
    mixed_run = train(mixed, [{"params": [p for p in mixed.parameters() if p.requires_grad], "lr": LR}], clip, **adamw)
    plain = tiny_model()
    scaled = {id(plain.get_submodule(name).weight) for name in target_module_names(plain)}
    trainable = [p for p in plain.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in scaled], "lr": C * LR},
              {"params": [p for p in trainable if id(p) not in scaled], "lr": LR}]
    plain_run = train(plain, groups, clip, **adamw)
    return max((a[name] - b[name]).abs().max().item() for a, b in zip(mixed_run, plain_run) for name in a)


def test_a_frozen_attention_is_a_learning_rate_scale_under_adamw():
    assert largest_gap(eps=0.0, weight_decay=0.0) < 1e-12


@pytest.mark.parametrize("broken", [dict(eps=1e-3, weight_decay=0.0), dict(eps=0.0, weight_decay=0.5),
                                    dict(eps=0.0, weight_decay=0.0, clip=1e-3)], ids=["eps", "weight-decay", "clipping"])
def test_the_equivalence_stops_where_the_docs_say(broken):
    # Adam's eps is not scaled with the gradient; decoupled decay shrinks W, not W_eff, towards 0; the
    # clipping norm counts the mixed gradients scaled by C.
    assert largest_gap(**broken) > 1e-9


# --- interpolate and fixed-attention as runs --------------------------------------------------------

def tiny_run(glue_dir, tiny_bert_dir, out, method, train_size=32):
    return RunConfig(task="rte", data_dir=str(glue_dir), model=str(tiny_bert_dir), method=method, train_size=train_size,
                     epochs=1, batch_size=8, max_length=32, seed=3, output_dir=str(out), save_model=False,
                     report_to="none")


def run_method(run, method):
    results, model, _ = finetune_with_model(run, method)
    return results, {k: v.clone() for k, v in model.state_dict().items()}


class PlainOnD1ThenAll(Method):
    """Plain fine-tuning on interpolate's schedule: D1 (blo-mixup's split), then every row."""

    name = "plain-d1-then-all"

    def fit(self, model, ctx):
        d1, _ = split_two(ctx.train_raw, 0.8, ctx.run.seed, ctx.task)
        first = train_loop(model, self, ctx, ctx.tokenize(d1), epochs=ctx.run.epochs, lr=ctx.lr, seed_offset=1)
        return {"phase1": first, "phase2": train_loop(model, self, ctx, ctx.train, epochs=ctx.run.epochs, lr=ctx.lr)}

    def weight_updates(self, stats):
        return stats["phase1"]["steps"] + stats["phase2"]["steps"]


def same_weights(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_interpolate_with_the_grid_1_is_plain_fine_tuning_on_its_schedule(glue_dir, tiny_bert_dir, tmp_path):
    cls = get_method("interpolate")
    run = tiny_run(glue_dir, tiny_bert_dir, tmp_path / "interpolate", "interpolate")
    results, weights = run_method(run, cls(cls.options_class(interpolate_alphas="1"), run))
    plain_run = tiny_run(glue_dir, tiny_bert_dir, tmp_path / "plain", "vanilla")
    plain_results, plain_weights = run_method(plain_run, PlainOnD1ThenAll(run=plain_run))
    assert results["interpolate"]["alpha"] == 1.0
    assert same_weights(weights, plain_weights)
    assert results["metrics"] == plain_results["metrics"]
    assert results["weight_updates"] == plain_results["weight_updates"] == get_method("blo-mixup")().planned_weight_updates(32, run)


def flip_dev_labels(glue_dir, target):
    """A copy of the fixture GLUE folder whose RTE dev labels are all flipped."""
    shutil.copytree(glue_dir, target)
    path = target / "RTE" / "dev.tsv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    flip = {"entailment": "not_entailment", "not_entailment": "entailment"}
    rows = [rows[0]] + [row[:-1] + [flip[row[-1]]] for row in rows[1:]]
    with open(path, "w", newline="") as handle:
        csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n").writerows(rows)
    return target


def test_interpolate_chooses_alpha_on_d2_never_on_the_dev_set(glue_dir, tiny_bert_dir, tmp_path):
    cls = get_method("interpolate")
    chosen, dev_scores = [], []
    for name, data in [("dev", glue_dir), ("flipped", flip_dev_labels(glue_dir, tmp_path / "glue"))]:
        run = tiny_run(data, tiny_bert_dir, tmp_path / name, "interpolate")
        results, _ = run_method(run, cls(cls.options_class(interpolate_alphas="0,0.5,0.9,1"), run))
        chosen.append(results["interpolate"])
        dev_scores.append(results["main_score"])
        assert results["training"]["phase1"]["d2_size"] == 32 - results["training"]["phase1"]["d1_size"] > 0
    assert dev_scores[0] != dev_scores[1]  # the flipped labels were read ...
    assert chosen[0] == chosen[1]  # ... and changed nothing about the choice
    record = chosen[0]
    assert list(record["d2_scores"]) == ["0", "0.5", "0.9", "1"] and record["alpha"] in (0.0, 0.5, 0.9, 1.0)
    assert record["d2_scores"][f"{record['alpha']:g}"] == max(record["d2_scores"].values())


def test_fixed_attention_at_1_is_vanilla_matched_and_records_its_value(glue_dir, tiny_bert_dir, tmp_path):
    fixed, matched = get_method("fixed-attention"), get_method("vanilla-matched")
    run = tiny_run(glue_dir, tiny_bert_dir, tmp_path / "fixed", "fixed-attention")
    results, weights = run_method(run, fixed(fixed.options_class(attention=1.0), run))
    matched_run = tiny_run(glue_dir, tiny_bert_dir, tmp_path / "matched", "vanilla-matched")
    matched_results, matched_weights = run_method(matched_run, matched(run=matched_run))
    assert same_weights(weights, matched_weights) and results["metrics"] == matched_results["metrics"]
    scaled_run = tiny_run(glue_dir, tiny_bert_dir, tmp_path / "scaled", "fixed-attention")
    scaled, scaled_weights = run_method(scaled_run, fixed(fixed.options_class(attention=0.5), scaled_run))
    assert scaled["training"]["attention"] == 0.5 and scaled["weight_updates"] == matched_results["weight_updates"]
    assert not same_weights(scaled_weights, matched_weights)


@pytest.mark.parametrize("text", ["", "0.5,2", "a,b", "-0.1"])
def test_a_bad_alpha_grid_is_one_line_naming_the_flag(text):
    with pytest.raises(UserError, match="--interpolate-alphas .* pass them comma-separated"):
        parse_alphas(text)
