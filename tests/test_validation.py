"""Bad input at the edges: each case ends with one line naming the problem and the fix, and exit code 2.

Cases already in test_cli.py (unknown task or method, missing files, bad labels, --lr -1, ...) are
not repeated here. The CLI is run in this process (run_main) on the tiny BERT of conftest.py.
"""

import json
import shutil
import types

import pytest
import torch
from torch import nn

from blo_mixup.errors import UserError
from conftest import writable_glue_copy
from test_cli import assert_one_line_error, broken_glue, finetune_args, run_main  # noqa: F401 (fixture)

BLO = ["--method", "blo-mixup", "--phase2-epochs", "0", "--no-save-model"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def blo_args(glue_dir, model_dir, tmp_path, *extra):
    return finetune_args(glue_dir, model_dir, tmp_path / "out", *BLO, *extra)


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out" / "results.json").exists()


# ------------------------------------------------------------------- 1. unknown hypergradient


@pytest.mark.parametrize("name, words", [
    ("foo", ["unknown hypergradient 'foo'", "choose one of: cg, darts, darts-plain, direct-only, neumann, nystrom, sama"]),
    ("neumanm", ["unknown hypergradient 'neumanm'", "did you mean 'neumann'"]),
])
def test_unknown_hypergradient_flag(name, words, glue_dir, tiny_bert_dir, tmp_path, capsys):
    result = run_main(capsys, *blo_args(glue_dir, tiny_bert_dir, tmp_path, "--hypergradient", name))
    assert_one_line_error(result, *words)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("name, words", [
    ("foo", ["unknown hypergradient 'foo'", "choose one of: cg, darts, darts-plain, direct-only, neumann, nystrom, sama"]),
    ("sam", ["unknown hypergradient 'sam'", "did you mean 'sama'"]),
])
def test_unknown_hypergradient_in_config_file(name, words, glue_dir, tiny_bert_dir, tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"method": "blo-mixup", "hypergradient": name}))
    args = finetune_args(glue_dir, tiny_bert_dir, tmp_path / "out", "--config", config)
    result = run_main(capsys, *args)
    assert_one_line_error(result, *words)
    assert_nothing_written(tmp_path)


# ------------------------------------------------------------------- 2. values out of range


@pytest.mark.parametrize("flag, value, words", [
    ("--split-ratio", "0", ["--split-ratio", "strictly between 0 and 1", "0.0"]),
    ("--split-ratio", "1.5", ["--split-ratio", "strictly between 0 and 1", "1.5"]),
    ("--upper-lr", "-1", ["--upper-lr must be positive", "-1"]),
    ("--outer-lr", "-1", ["--upper-lr must be positive", "-1"]),  # the old name of --upper-lr still works
    ("--epochs", "0", ["--epochs must be positive", "got 0"]),
    ("--batch-size", "0", ["--batch-size must be positive", "got 0"]),
    ("--unroll-steps", "0", ["--unroll-steps must be positive", "got 0"]),
    ("--mixup-rank", "0", ["--mixup-rank must be positive", "got 0"]),
])
def test_option_out_of_range(flag, value, words, glue_dir, tiny_bert_dir, tmp_path, capsys):
    result = run_main(capsys, *blo_args(glue_dir, tiny_bert_dir, tmp_path, flag, value))
    assert_one_line_error(result, *words)
    assert_nothing_written(tmp_path)


# ------------------------------------------------------------------- 3. D1/D2 split too small


@pytest.mark.parametrize("extra, words", [
    # 2 examples at 0.8: round(1.6) = 2 in D1, none left for D2; 3 gives 2 + 1
    (["--train-size", "2"], ["splitting 2 training examples", "D2 empty", "--train-size to at least 3",
                             "--split-ratio 0.8"]),
    # 16 examples at 0.02: round(0.32) = 0 in D1; 25 is the first size with round(0.02 n) >= 1
    (["--split-ratio", "0.02"], ["splitting 16 training examples", "D1 empty", "--train-size to at least 25",
                                 "--split-ratio 0.02", "closer to 0.5"]),
])
def test_train_size_too_small_for_the_split(extra, words, glue_dir, tiny_bert_dir, tmp_path, capsys, monkeypatch):
    import blo_mixup.finetune

    def must_not_load(*args, **kwargs):
        raise AssertionError("the split is checked before data and model are loaded")

    monkeypatch.setattr(blo_mixup.finetune, "build_context", must_not_load)
    result = run_main(capsys, *blo_args(glue_dir, tiny_bert_dir, tmp_path, *extra))
    assert_one_line_error(result, *words)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9, 0.97, 0.02, 0.3])
def test_split_minimum_is_the_smallest_size_that_fills_both_halves(ratio):
    from blo_mixup.data import split_sizes

    with pytest.raises(UserError) as error:
        split_sizes(1, ratio)
    minimum = int(str(error.value).split("at least ")[1].split()[0])
    n_first = split_sizes(minimum, ratio)
    assert 0 < n_first < minimum
    with pytest.raises(UserError, match="empty"):
        split_sizes(minimum - 1, ratio)


# ------------------------------------------------------------------- 4. mixup rank above the matrix


def test_mixup_rank_above_the_smallest_matrix(glue_dir, tiny_bert_dir, tmp_path, capsys, monkeypatch):
    from blo_mixup.blo.method import BloMixup

    def must_not_train(*args, **kwargs):
        raise AssertionError("the rank is checked before training")

    monkeypatch.setattr(BloMixup, "fit", must_not_train)
    result = run_main(capsys, *blo_args(glue_dir, tiny_bert_dir, tmp_path, "--mixup-rank", "1000"))
    # the tiny BERT: hidden 32, intermediate 64, so the smallest matrices are 32 x 32
    assert_one_line_error(result, "mixup rank 1000", "smallest mixed weight matrix", "32 x 32",
                          "at most 32", "--mixup-rank")
    assert_nothing_written(tmp_path)


def test_rank_error_names_the_smallest_matrix_and_leaves_the_model_alone():
    from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup, is_mixed

    model = nn.Module()
    model.encoder = nn.ModuleDict({"wide": nn.Linear(64, 64), "narrow": nn.Linear(64, 8)})
    with pytest.raises(UserError, match=r"rank 16 exceeds .*'encoder.narrow' of shape 8 x 64; "
                                        r"choose a rank of at most 8"):
        attach_weight_mixup(model, MixupConfig(rank=16))
    assert not is_mixed(model)  # 'wide' comes first and fits, yet was not changed either


# ------------------------------------------------------------------- 5. no double backward


@pytest.fixture
def sdpa_bert_dir(tiny_bert_dir, tmp_path):
    """The tiny BERT without attention dropout: training then runs SDPA's fused CPU kernel, which has
    no double backward (with dropout, SDPA falls back to plain math, which has one)."""
    path = tmp_path / "sdpa-bert"
    shutil.copytree(tiny_bert_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["attention_probs_dropout_prob"] = 0.0
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("hypergradient", ["neumann", "cg"])
def test_second_order_hypergradient_without_double_backward(hypergradient, glue_dir, sdpa_bert_dir, tmp_path,
                                                            capsys, monkeypatch):
    from blo_mixup.blo.method import BloMixup

    # blo-mixup loads eager attention for neumann and cg; load the fused kernel instead
    monkeypatch.setattr(BloMixup, "model_kwargs", lambda self: {"eager_attention": False})
    result = run_main(capsys, *blo_args(glue_dir, sdpa_bert_dir, tmp_path, "--hypergradient", hypergradient))
    assert_one_line_error(result, f"the '{hypergradient}' hypergradient needs second derivatives",
                          "is not implemented", "--hypergradient darts, darts-plain or sama")
    assert_nothing_written(tmp_path)


def test_other_runtime_errors_are_not_turned_into_user_errors():
    from blo_mixup.blo.hypergradients.utils import double_backward as _double_backward

    with pytest.raises(RuntimeError, match="out of memory"):
        with _double_backward("neumann"):
            raise RuntimeError("CUDA out of memory")


# ------------------------------------------------------------------- 6. three levels


class TinyClassifier(nn.Module):
    """3 inputs -> 4 hidden ("layer", mixed) -> 2 classes ("classifier", not mixed)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 4)
        self.classifier = nn.Linear(4, 2)

    def forward(self, inputs):
        return types.SimpleNamespace(logits=self.classifier(torch.tanh(self.layer(inputs))))


@pytest.mark.parametrize("middle", ["neumann", "cg"])
def test_three_levels_with_a_second_order_middle(middle):
    """The three-level graph of docs/three-levels.md built by hand, its middle node on Neumann/CG."""
    from betty.configs import EngineConfig
    from betty.engine import Engine

    from blo_mixup.blo.engine import adam, quiet_betty, three_level_dependencies, upper_config
    from blo_mixup.blo.hypergradients import hypergradient_config
    from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup
    from blo_mixup.blo.problems import DataWeighting, ExampleWeights, MixupAttention, TaskWeights

    quiet_betty()
    torch.manual_seed(0)
    model = TinyClassifier()
    mixup = attach_weight_mixup(model, MixupConfig())
    d1 = {"inputs": torch.randn(6, 3), "labels": torch.randint(0, 2, (6,)), "idx": torch.arange(6)}
    d2 = {"inputs": torch.randn(8, 3), "labels": torch.randint(0, 2, (8,)), "idx": torch.arange(8)}
    weights = TaskWeights("weights", hypergradient_config("darts"), model, adam(model.parameters(), 1e-3, 0.0),
                          None, [d1], weight_decay=0.0, lr=1e-3, shaped_by=("data",))
    attention = MixupAttention("attention", hypergradient_config(middle, retain_graph=True, first_order=True),
                               mixup, adam(mixup.parameters(), 1e-3, 0.0), None, [d2])
    example_weights = ExampleWeights(6)
    data = DataWeighting("data", upper_config(), example_weights, adam(example_weights.parameters(), 1e-2, 0.0),
                         None, [d2], model=model)
    u2l, l2u = three_level_dependencies(weights, attention, data)
    engine = Engine(problems=[weights, attention, data], dependencies={"u2l": u2l, "l2u": l2u},
                    config=EngineConfig(train_iters=1, strategy="cpu", logger_type="none"))
    with pytest.raises(UserError, match=rf"the '{middle}' hypergradient cannot sit on problem 'attention', "
                                        r"which has lower problems of its own; use 'darts-plain' \(or 'darts'\) for a middle level"):
        engine.run()


# ------------------------------------------------------------------- 7. malformed TSV rows


def test_short_row_in_train_tsv(broken_glue, tiny_bert_dir, tmp_path, capsys):
    train = broken_glue / "RTE" / "train.tsv"
    lines = train.read_text().splitlines()
    lines[4] = "\t".join(lines[4].split("\t")[:3])  # line 5: index, sentence1, sentence2; no label
    train.write_text("\n".join(lines) + "\n")
    result = run_main(capsys, *finetune_args(broken_glue, tiny_bert_dir, tmp_path / "out"))
    assert_one_line_error(result, str(train), "malformed row", "line 5 has 3 tab-separated fields, expected 4",
                          "fix or delete line(s) 5")
    assert_nothing_written(tmp_path)


# ------------------------------------------------------------------- 8. STS-B scores


@pytest.fixture
def stsb_glue(tmp_path, glue_dir):
    """A writable copy of STS-B with a short train.tsv."""
    return writable_glue_copy(tmp_path / "glue", glue_dir, "STS-B", 40)


@pytest.mark.parametrize("score, words", [
    ("7.0", ["score '7.0' is outside stsb's range 0 to 5", "fix the score column"]),
    ("-0.5", ["score '-0.5' is outside stsb's range 0 to 5", "fix the score column"]),
    ("abc", ["score 'abc' is not a number", "numeric score"]),
])
def test_stsb_score_out_of_range(score, words, stsb_glue, tiny_bert_dir, tmp_path, capsys):
    train = stsb_glue / "STS-B" / "train.tsv"
    lines = train.read_text().splitlines()
    lines[2] = "\t".join([*lines[2].split("\t")[:-1], score])  # line 3
    train.write_text("\n".join(lines) + "\n")
    args = finetune_args(stsb_glue, tiny_bert_dir, tmp_path / "out")
    args[args.index("rte")] = "stsb"
    result = run_main(capsys, *args)
    assert_one_line_error(result, str(train), "line 3", *words)
    assert_nothing_written(tmp_path)


# ------------------------------------------------------------------- unroll longer than phase 1


def test_unroll_steps_longer_than_phase_1(glue_dir, tiny_bert_dir, tmp_path, capsys):
    # 16 examples, batch 8, D1 = 13: 2 lower steps per epoch, 1 epoch: 2 steps < 50.
    result = run_main(capsys, *blo_args(glue_dir, tiny_bert_dir, tmp_path, "--unroll-steps", "50"))
    assert_one_line_error(result, "--unroll-steps 50", "2 lower steps", "never be updated", "--phase1-epochs")
    assert_nothing_written(tmp_path)
