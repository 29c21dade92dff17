"""Tests of the weight-mixup transform (blo_mixup/blo/mixup.py) on tiny models built from configs."""

import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_home_"))

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    AlbertConfig,
    AlbertForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)
from transformers.pytorch_utils import Conv1D  # noqa: E402

from blo_mixup.errors import UserError  # noqa: E402
from blo_mixup.blo.mixup import (  # noqa: E402
    MixupConfig,
    WeightMixup,
    attach_weight_mixup,
    is_mixed,
    merge_weight_mixup,
    target_module_names,
)

SMALL = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
)

# arch -> (model class, config factory, name prefixes of the modules that must be mixed by default)
ARCHS = {
    "bert": (BertForSequenceClassification, lambda: BertConfig(**SMALL),
             ("bert.encoder.", "bert.pooler.")),
    "roberta": (RobertaForSequenceClassification, lambda: RobertaConfig(**SMALL),
                ("roberta.encoder.",)),
    "deberta-v2": (
        DebertaV2ForSequenceClassification,
        lambda: DebertaV2Config(
            **SMALL, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=16
        ),
        ("deberta.encoder.", "pooler."),
    ),
    "electra": (ElectraForSequenceClassification, lambda: ElectraConfig(embedding_size=16, **SMALL),
                ("electra.encoder.",)),
    "distilbert": (
        DistilBertForSequenceClassification,
        lambda: DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37),
        ("distilbert.transformer.",),
    ),
    "albert": (AlbertForSequenceClassification, lambda: AlbertConfig(embedding_size=16, **SMALL),
               ("albert.encoder.", "albert.pooler")),
    "gpt2": (
        GPT2ForSequenceClassification,
        lambda: GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, pad_token_id=0,
                           bos_token_id=1, eos_token_id=1),
        ("transformer.h.",),
    ),
}

# Every granularity, both forms, both constraints.
COMBOS = {
    "rank1-convex": dict(granularity="rank", rank=1, form="convex"),
    "rank2-convex": dict(granularity="rank", rank=2, form="convex"),
    "rank1-paper": dict(granularity="rank", rank=1, form="paper"),
    "rank2-paper": dict(granularity="rank", rank=2, form="paper"),
    "element": dict(granularity="element"),
    "row": dict(granularity="row"),
    "matrix": dict(granularity="matrix"),
    "rank1-sigmoid": dict(granularity="rank", rank=1, constraint="sigmoid"),
    "element-sigmoid": dict(granularity="element", constraint="sigmoid"),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_model(arch, seed=0):
    model_class, make_config, _ = ARCHS[arch]
    torch.manual_seed(seed)
    return model_class(make_config()).eval()


def make_batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 99, (3, 9), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]


@torch.no_grad()
def randomize(mixup, seed=2):
    """Move W (all task parameters) away from W0 and A to random values inside the constraint."""
    generator = torch.Generator().manual_seed(seed)
    for param in mixup.task_parameters():
        param.add_(0.1 * torch.randn(param.shape, generator=generator))
    for param in mixup.attention_parameters():
        if mixup.config.constraint == "sigmoid":
            param.copy_(2.0 * torch.randn(param.shape, generator=generator))  # logits
        else:
            param.copy_(torch.rand(param.shape, generator=generator))


def expected_effective_weight(module, attention, config):
    """W_eff from the definition, written independently of the implementation."""
    weight = module.parametrizations.weight.original
    w0 = module.parametrizations.weight[0].w0
    squash = torch.sigmoid if config.constraint == "sigmoid" else (lambda t: t)
    conv1d = isinstance(module, Conv1D)  # stores (in, out): A is transposed
    if config.granularity == "rank":
        a, c = squash(attention.a), squash(attention.c)
        on_w = (a @ c) / config.rank
        on_w0 = ((1 - a) @ (1 - c)) / config.rank
        if conv1d:
            on_w, on_w0 = on_w.T, on_w0.T
        if config.form == "paper":
            return on_w * weight + on_w0 * w0
        return on_w * weight + (1 - on_w) * w0
    coefficient = squash(attention.a)  # element: W's shape; row: one per output unit; matrix: scalar
    if config.granularity == "row":
        assert coefficient.numel() == (weight.shape[1] if conv1d else weight.shape[0])
    return coefficient * weight + (1 - coefficient) * w0


# --------------------------------------------------------------------------------------------------
# What is mixed


def test_default_targets_bert_are_the_six_linears_per_layer_and_the_pooler():
    model = make_model("bert")
    per_layer = [
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense",
    ]
    expected = [f"bert.encoder.layer.{i}.{name}" for i in range(2) for name in per_layer]
    expected.append("bert.pooler.dense")
    assert target_module_names(model) == expected
    mixup = attach_weight_mixup(model)
    assert mixup.mixed_module_names() == expected
    assert not is_mixed(model.classifier) and not is_mixed(model.bert.embeddings)


@pytest.mark.parametrize("arch", ARCHS)
def test_default_targets_are_the_layer_stack_and_pooler(arch):
    model = make_model(arch)
    prefixes = ARCHS[arch][2]
    expected = [n for n in linear_names(model) if n.startswith(prefixes)]
    assert expected, "the test's prefixes match nothing"
    assert target_module_names(model) == expected  # so heads and embedding projections stay plain
    assert len(expected) < len(linear_names(model))


def test_target_and_exclude_patterns():
    model = make_model("bert")
    config = MixupConfig(target_modules=[r"\.query$", "value"], exclude_modules=["layer\\.1\\."])
    assert target_module_names(model, config) == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.value",
    ]
    config = MixupConfig(exclude_modules=["pooler"])
    assert "bert.pooler.dense" not in target_module_names(model, config)
    # a user may target a head explicitly
    assert target_module_names(model, MixupConfig(target_modules="classifier")) == ["classifier"]


def test_albert_shared_layer_is_mixed_once():
    model = make_model("albert")
    mixup = attach_weight_mixup(model)
    names = mixup.mixed_module_names()
    assert len(names) == len(set(names)) == 8  # 6 shared layer Linears + mapping in + pooler
    calls = []
    for name in names:
        parametrization = model.get_submodule(name).parametrizations.weight[0]
        parametrization.register_forward_hook(lambda *_: calls.append(1))
    model(**make_batch())
    assert len(calls) == 6 * 2 + 2  # the one shared layer runs at both depths, with one W_eff each


# --------------------------------------------------------------------------------------------------
# Equivalences: initialisation, merge, save/load


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_model_equals_pretrained_at_initialisation(arch, combo):
    model = make_model(arch)
    batch = make_batch()
    with torch.no_grad():
        reference = model(**batch).logits
    options = dict(COMBOS[combo])
    if options.get("form", "convex") == "convex":
        options["init_std"] = 0.005  # the paper's noise: W = W0 at start, so A does not matter
    mixup = attach_weight_mixup(model, MixupConfig(**options))
    assert is_mixed(model)
    with torch.no_grad():
        mixed = model(**batch).logits
    assert (mixed - reference).abs().max().item() < 1e-5


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_save_reproduce_the_mixed_model(arch, combo, tmp_path):
    model = make_model(arch)
    batch = make_batch()
    with torch.no_grad():
        reference = model(**batch).logits
    config = MixupConfig(**COMBOS[combo])
    mixup = attach_weight_mixup(model, config)
    randomize(mixup)

    # the effective weight is the formula, and the attention changes the output
    key, attention = next(iter(mixup.attentions.items()))
    module = model.get_submodule(mixup._module_names[key][0])
    torch.testing.assert_close(
        module.weight, expected_effective_weight(module, attention, config), rtol=0, atol=1e-6
    )
    with torch.no_grad():
        mixed = model(**batch).logits
    assert (mixed - reference).abs().max().item() > 1e-4

    assert merge_weight_mixup(model) is model
    assert not is_mixed(model)
    assert all("parametrizations" not in k and "w0" not in k for k in model.state_dict())
    assert all(type(m).__name__ in ("Linear", "Conv1D") for m in model.modules()
               if isinstance(m, (nn.Linear, Conv1D)))
    with torch.no_grad():
        merged = model(**batch).logits
    assert (merged - mixed).abs().max().item() < 1e-5

    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert not [k for k in saved if "parametriz" in k or "original" in k or "w0" in k]
    config_text = (tmp_path / "config.json").read_text()
    assert "mixup" not in config_text.lower() and "parametriz" not in config_text
    reloaded = ARCHS[arch][0].from_pretrained(tmp_path).eval()
    with torch.no_grad():
        loaded = reloaded(**batch).logits
    assert (loaded - mixed).abs().max().item() < 1e-5


def test_merge_accepts_the_weight_mixup_and_keeps_parameter_identity():
    model = make_model("bert")
    query = model.bert.encoder.layer[0].attention.self.query.weight
    mixup = attach_weight_mixup(model)
    assert model.bert.encoder.layer[0].attention.self.query.parametrizations.weight.original is query
    randomize(mixup)
    expected = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    merge_weight_mixup(mixup)
    assert model.bert.encoder.layer[0].attention.self.query.weight is query
    assert torch.equal(query.detach(), expected)


# --------------------------------------------------------------------------------------------------
# Gradients, constraint, parameters


@pytest.mark.parametrize("combo", ["rank1-convex", "rank1-paper", "element", "row", "matrix",
                                   "rank1-sigmoid"])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "albert"])
def test_gradients_reach_w_and_a_but_not_w0(arch, combo):
    model = make_model(arch).train()
    mixup = attach_weight_mixup(model, MixupConfig(**COMBOS[combo]))
    randomize(mixup)  # with W = W0 the gradient of A would be exactly zero
    buffers = {n: b.detach().clone() for n, b in model.named_buffers() if n.endswith(".w0")}
    assert len(buffers) == len(mixup.attentions)
    task_before = [p.detach().clone() for p in mixup.task_parameters()]
    attention_before = [p.detach().clone() for p in mixup.attention_parameters()]

    logits = model(**make_batch()).logits
    logits.square().mean().backward()
    mixed_weights = [model.get_submodule(n).parametrizations.weight.original
                     for n in mixup.mixed_module_names()]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in mixed_weights)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixup.attention_parameters())
    for name, w0 in model.named_buffers():
        if name.endswith(".w0"):
            assert not w0.requires_grad and w0.grad is None

    optimizer = torch.optim.Adam(list(model.parameters()) + list(mixup.parameters()), lr=0.1)
    optimizer.step()
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers() if n in buffers)
    assert all(not torch.equal(p, q) for p, q in zip(mixup.task_parameters(), task_before)
               if p.grad is not None)
    assert all(not torch.equal(p, q) for p, q in zip(mixup.attention_parameters(), attention_before))
    state = optimizer.state_dict()["state"]
    assert len(state) == len(list(model.parameters())) + len(mixup.attention_parameters())


@pytest.mark.parametrize("combo", ["rank2-convex", "rank2-paper", "element", "row", "matrix",
                                   "rank1-sigmoid"])
def test_first_and_second_derivatives_of_the_mix(combo):
    """Neumann and CG hypergradients differentiate the lower-level gradient once more."""
    torch.manual_seed(0)
    linear = nn.Linear(5, 4).double()
    config = MixupConfig(**COMBOS[combo], init=0.6, init_std=0.1, target_modules=[""])
    mixup = attach_weight_mixup(linear, config)
    attention = next(iter(mixup.attentions.values()))
    w0 = linear.parametrizations.weight[0].w0
    names = [n for n, _ in attention.named_parameters()]

    def mixed(weight, *factors):
        """W_eff as a pure function of W and of the attention's parameters."""
        originals = dict(attention._parameters)
        try:
            attention._parameters.update(zip(names, factors))
            return attention.mix(weight, w0)
        finally:
            attention._parameters.update(originals)

    weight = (w0 + 0.3 * torch.randn_like(w0)).requires_grad_()
    inputs = (weight,) + tuple(p.detach().clone().requires_grad_() for p in attention.parameters())
    assert torch.autograd.gradcheck(mixed, inputs)
    assert torch.autograd.gradgradcheck(mixed, inputs)


@pytest.mark.parametrize("combo", ["rank1-convex", "rank2-paper", "element", "row", "matrix"])
def test_project_clamps_the_attention_into_0_1(combo):
    model = make_model("gpt2")
    mixup = attach_weight_mixup(model, MixupConfig(**COMBOS[combo]))
    with torch.no_grad():
        for param in mixup.attention_parameters():
            param.copy_(torch.linspace(-1.0, 2.0, param.numel()).reshape(param.shape))
    values = torch.cat([a.flatten() for a in mixup.attention_by_module().values()])
    assert values.min() < 0 or values.max() > 1  # really outside before the projection
    mixup.project_()
    assert all(p.min() >= 0 and p.max() <= 1 for p in mixup.attention_parameters())
    values = torch.cat([a.flatten() for a in mixup.attention_by_module().values()])
    assert values.min() >= 0 and values.max() <= 1
    assert values.min() == 0 or values.max() == 1  # clamped, not rescaled


@pytest.mark.parametrize("combo", ["rank1-sigmoid", "element-sigmoid"])
def test_sigmoid_keeps_the_attention_strictly_inside_0_1(combo):
    model = make_model("bert")
    mixup = attach_weight_mixup(model, MixupConfig(**COMBOS[combo]))
    initial = torch.cat([a.flatten() for a in mixup.attention_by_module().values()])
    assert 0.95 < initial.min() and initial.max() < 1  # init 1.0 starts just inside (0, 1)
    with torch.no_grad():
        for param in mixup.attention_parameters():
            param.copy_(torch.linspace(-8.0, 8.0, param.numel()).reshape(param.shape))
    before = [p.detach().clone() for p in mixup.attention_parameters()]
    mixup.project_()  # nothing to project
    assert all(torch.equal(p, q) for p, q in zip(mixup.attention_parameters(), before))
    values = torch.cat([a.flatten() for a in mixup.attention_by_module().values()])
    assert values.min() > 0 and values.max() < 1


def test_model_and_mixup_parameters_are_disjoint():
    model = make_model("bert")
    mixup = attach_weight_mixup(model)
    model_ids = {id(p) for p in model.parameters()}
    attention_ids = {id(p) for p in mixup.parameters()}
    assert attention_ids and not model_ids & attention_ids
    assert [id(p) for p in mixup.attention_parameters()] == [id(p) for p in mixup.parameters()]
    task_ids = [id(p) for p in mixup.task_parameters()]
    assert len(task_ids) == len(set(task_ids))
    assert set(task_ids) == model_ids  # every model parameter is a task parameter here
    # W0 is a buffer, in the model's state_dict (checkpoints) and not in its parameters
    w0_names = [n for n, _ in model.named_buffers() if n.endswith(".w0")]
    assert len(w0_names) == 13 and all(n in model.state_dict() for n in w0_names)
    # a frozen model parameter is not a task parameter
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    assert id(model.bert.embeddings.word_embeddings.weight) not in {
        id(p) for p in mixup.task_parameters()
    }
    assert isinstance(mixup, WeightMixup) and mixup.model is model
    assert model not in list(mixup.modules())


def test_attention_count_on_bert_base_shapes_is_under_one_percent():
    with torch.device("meta"):  # BERT-base shapes without allocating 110M parameters
        model = BertForSequenceClassification(BertConfig())
    mixup = attach_weight_mixup(model, MixupConfig(rank=1))
    total = sum(p.numel() for p in model.parameters())
    expected = sum(
        sum(model.get_submodule(n).parametrizations.weight.original.shape)
        for n in mixup.mixed_module_names()
    )
    assert len(mixup.mixed_module_names()) == 12 * 6 + 1
    assert mixup.num_attention_parameters() == expected == 12 * (4 * 1536 + 2 * 3840) + 1536
    assert mixup.num_attention_parameters() < 0.01 * total
    assert 100e6 < total < 120e6


def test_element_granularity_has_one_attention_value_per_weight():
    model = make_model("gpt2")
    mixup = attach_weight_mixup(model, MixupConfig(granularity="element"))
    assert mixup.num_attention_parameters() == sum(
        model.get_submodule(n).parametrizations.weight.original.numel()
        for n in mixup.mixed_module_names()
    )


def test_attention_inspection():
    model = make_model("bert")
    mixup = attach_weight_mixup(model, MixupConfig(granularity="matrix"))
    with torch.no_grad():
        for i, param in enumerate(mixup.attention_parameters()):
            param.fill_(0.5 if i == 0 else 1.0)
    by_module = mixup.attention_by_module()
    names = mixup.mixed_module_names()
    assert list(by_module) == names
    first = model.get_submodule(names[0]).parametrizations.weight.original
    assert by_module[names[0]].shape == first.shape
    stats = mixup.attention_stats()
    assert stats[names[0]] == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5}
    assert stats[names[1]]["mean"] == 1.0
    summary = mixup.attention_summary()
    sizes = [model.get_submodule(n).parametrizations.weight.original.numel() for n in names]
    expected_mean = (0.5 * sizes[0] + sum(sizes[1:])) / sum(sizes)
    assert summary["mean"] == pytest.approx(expected_mean)
    assert summary["min"] == 0.5 and summary["max"] == 1.0
    assert summary["num_modules"] == 13 and summary["num_attention_parameters"] == 13
    json.dumps({"stats": stats, "summary": summary})  # ready for results.json


def test_effective_weight_is_computed_once_per_forward():
    model = make_model("bert")
    mixup = attach_weight_mixup(model)
    calls = []
    for name in mixup.mixed_module_names():
        parametrization = model.get_submodule(name).parametrizations.weight[0]
        parametrization.register_forward_hook(lambda *_: calls.append(1))
    model(**make_batch())
    assert len(calls) == 13


def test_state_dict_round_trip_and_freezing():
    model = make_model("bert")
    mixup = attach_weight_mixup(model, MixupConfig(rank=2))
    randomize(mixup)
    batch = make_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    model_state, attention_state = model.state_dict(), mixup.state_dict()

    fresh_model = make_model("bert", seed=5)
    fresh_mixup = attach_weight_mixup(fresh_model, MixupConfig(rank=2))
    fresh_model.load_state_dict(model_state)
    fresh_mixup.load_state_dict(attention_state)
    with torch.no_grad():
        assert torch.equal(fresh_model(**batch).logits, expected)
        assert torch.equal(fresh_mixup(**batch).logits, expected)  # calling the mixup calls the model

    fresh_mixup.requires_grad_(False)  # phase 2: A fixed, W trained
    fresh_model(**batch).logits.sum().backward()
    assert all(p.grad is None for p in fresh_mixup.parameters())
    assert all(not p.requires_grad for p in fresh_mixup.parameters())
    assert fresh_model.bert.pooler.dense.parametrizations.weight.original.grad is not None


def test_moving_the_model_moves_w0():
    model = make_model("bert")
    mixup = attach_weight_mixup(model)
    model.double()
    mixup.double()
    assert all(b.dtype == torch.float64 for n, b in model.named_buffers() if n.endswith(".w0"))
    assert model(**make_batch()).logits.dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# Tied weights


def test_two_targeted_modules_tying_one_weight_share_one_attention():
    model = make_model("bert")
    layers = model.bert.encoder.layer
    layers[1].attention.self.query.weight = layers[0].attention.self.query.weight
    batch = make_batch()
    mixup = attach_weight_mixup(model)
    assert len(mixup.attentions) == 12 and len(mixup.mixed_module_names()) == 13
    randomize(mixup)
    first, second = layers[0].attention.self.query, layers[1].attention.self.query
    assert first.parametrizations.weight.original is second.parametrizations.weight.original
    assert torch.equal(first.weight, second.weight)  # both see the same W_eff
    assert len([n for n, _ in model.named_buffers() if n.endswith(".w0")]) == 12
    with torch.no_grad():
        mixed = model(**batch).logits
    merge_weight_mixup(model)
    assert first.weight is second.weight  # still tied
    with torch.no_grad():
        assert (model(**batch).logits - mixed).abs().max().item() < 1e-5


@pytest.mark.parametrize("model_class,make_config,head,embedding", [
    (BertForMaskedLM, lambda: BertConfig(**SMALL), "cls.predictions.decoder",
     "bert.embeddings.word_embeddings"),
    (GPT2LMHeadModel, lambda: GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4,
                                         bos_token_id=1, eos_token_id=1),
     "lm_head", "transformer.wte"),
])
def test_tied_lm_head_and_embeddings_are_not_mixed(model_class, make_config, head, embedding):
    torch.manual_seed(0)
    model = model_class(make_config()).eval()
    assert model.get_submodule(head).weight is model.get_submodule(embedding).weight
    batch = make_batch()
    mixup = attach_weight_mixup(model)
    assert not any(n.startswith((head, "cls.")) for n in mixup.mixed_module_names())
    assert not is_mixed(model.get_submodule(head))
    assert model.get_submodule(head).weight is model.get_submodule(embedding).weight
    randomize(mixup)
    with torch.no_grad():
        mixed = model(**batch).logits
    merge_weight_mixup(model)
    assert model.get_submodule(head).weight is model.get_submodule(embedding).weight
    with torch.no_grad():
        assert (model(**batch).logits - mixed).abs().max().item() < 1e-5
    # mixing the head alone would untie it from the embedding: refused
    with pytest.raises(UserError, match="shared with"):
        attach_weight_mixup(model, MixupConfig(target_modules=[f"^{head}$"]))


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("options,message", [
    (dict(granularity="rows"), "unknown mixup granularity 'rows'.*did you mean 'row'"),
    (dict(form="convx"), "unknown mixup form"),
    (dict(constraint="tanh"), "unknown mixup constraint"),
    (dict(rank=0), "rank"),
    (dict(rank=1.5), "rank"),
    (dict(init=1.5), "init"),
    (dict(init=-0.1), "init"),
    (dict(init_std=-1.0), "init_std"),
    (dict(granularity="element", form="paper"), "needs granularity 'rank'"),
    (dict(target_modules=["("]), "regular expression"),
    (dict(exclude_modules=["[a-"]), "regular expression"),
])
def test_bad_configs_raise_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        MixupConfig(**options)


def test_bad_attachments_raise_user_errors():
    model = make_model("bert")
    with pytest.raises(UserError, match="rank 33 exceeds"):
        attach_weight_mixup(model, MixupConfig(rank=33))
    with pytest.raises(UserError, match="matched no"):
        attach_weight_mixup(model, MixupConfig(target_modules=["no_such_module"]))
    with pytest.raises(UserError, match="matched no"):
        attach_weight_mixup(nn.Sequential(nn.Linear(3, 3)))
    assert not is_mixed(model)  # failed attempts left the model alone
    attach_weight_mixup(model)
    with pytest.raises(UserError, match="already has a weight mixup"):
        attach_weight_mixup(model)


# ------------------------------------------------------------------------------------------------
# Guards: an ordinary training loop that forgets the attention, and save_pretrained before merging


def _plain_loop(model, optimizer, steps):
    batch = make_batch()
    labels = torch.zeros(batch["input_ids"].shape[0], dtype=torch.long)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()


def test_a_loop_that_never_updates_the_attention_warns_once():
    model = make_model("bert")
    attach_weight_mixup(model, MixupConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # W only: the trap
    with pytest.warns(UserWarning, match="never updated") as caught:
        _plain_loop(model, optimizer, 55)
    assert len([w for w in caught if "never updated" in str(w.message)]) == 1


@pytest.mark.parametrize("setup", ["attention trained", "attention frozen", "eval only"])
def test_no_warning_when_the_attention_is_trained_or_frozen(setup):
    import warnings

    model = make_model("bert")
    mixup = attach_weight_mixup(model, MixupConfig())
    params = list(model.parameters())
    if setup == "attention trained":
        params += list(mixup.parameters())
    if setup == "attention frozen":
        mixup.requires_grad_(False)
    optimizer = torch.optim.SGD(params, lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if setup == "eval only":
            model.eval()
            with torch.no_grad():
                for _ in range(60):
                    model(**make_batch())
        else:
            _plain_loop(model, optimizer, 60)


def test_save_pretrained_refuses_an_unmerged_model_and_works_after_merging(tmp_path):
    model = make_model("bert")
    attach_weight_mixup(model, MixupConfig())
    with pytest.raises(UserError, match="merge_weight_mixup"):
        model.save_pretrained(tmp_path / "unmerged")
    assert not (tmp_path / "unmerged" / "model.safetensors").exists()
    merge_weight_mixup(model)
    model.save_pretrained(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    _plain_loop(model, torch.optim.SGD(model.parameters(), lr=1e-3), 2)  # the watch is gone with the mixup
