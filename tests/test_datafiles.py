"""Your own data (blo_mixup.datafiles): formats, labels, the held-out evaluation set, metrics, and every
bad-data error, at the loading level (no model). The CLI end to end is in test_own_data.py."""

import json
from collections import Counter

import pytest

from blo_mixup.config import RunConfig, validate_run_config
from blo_mixup.data import get_task, load_glue, subsample
from blo_mixup.datafiles import load_task_data
from blo_mixup.errors import UserError
from blo_mixup.metrics import compute_metrics, constant_prediction_score

TOPICS = ("sports", "politics", "science", "art")


def write_csv(path, header, rows, sep=","):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def topic_rows(n=40):
    """Text pairs with 4 string labels, columns named unlike GLUE's; the first text has a comma and quotes."""
    return [[f'"{TOPICS[i % 4]}" news, {i}', f"about {TOPICS[i % 4]} {i}", TOPICS[i % 4], "x"] for i in range(n)]


@pytest.fixture
def topics_csv(tmp_path):
    return write_csv(tmp_path / "topics.csv", ["headline", "body", "topic", "extra"], topic_rows())


def own(path, **options):
    values = dict(train_file=str(path), text_columns="headline,body", label_column="topic")
    values.update(options)
    return RunConfig(**values)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def scores(n=30):
    return [{"sentence": f"sentence number {i}", "score": i / 7} for i in range(n)]


# ----------------------------------------------------------------------------------------- loading


def test_csv_with_four_string_labels_and_text_pairs(topics_csv):
    data = load_task_data(own(topics_csv))
    task = data.task
    assert task.name == "topics" and task.source == "data"
    assert task.text_columns == ("headline", "body")
    assert task.label_names == ("art", "politics", "science", "sports")  # sorted: a stable order
    assert not task.is_regression and task.num_labels == 4
    assert task.metrics == ("accuracy", "macro_f1", "matthews_correlation") and task.main_metric == "accuracy"
    # no validation file: 20% held out, stratified (2 rows of each label), the rest is the training data
    assert (len(data.train), len(data.evaluation)) == (32, 8)
    assert Counter(data.evaluation["label"]) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert not set(data.train["idx"]) & set(data.evaluation["idx"])
    assert "held out" in data.evaluation_set and "8 of its 40 rows" in data.evaluation_set
    row = data.evaluation[0]
    assert row["headline"] == f'"{TOPICS[row["idx"] % 4]}" news, {row["idx"]}'  # quotes and commas kept
    assert task.label_names[row["label"]] == TOPICS[row["idx"] % 4]
    assert data.train.column_names == ["headline", "body", "label", "idx"]
    # the same held-out rows every time (not drawn per seed); the task is known by name afterwards
    assert load_task_data(own(topics_csv, seed=7)).evaluation["idx"] == data.evaluation["idx"]
    assert get_task("topics") == task
    assert load_glue(task)["train"]["idx"] == data.train["idx"]


def test_train_size_draws_a_stratified_subsample_of_own_data(topics_csv):
    data = load_task_data(own(topics_csv))
    sample = subsample(data.train, 8, seed=1, task=data.task)
    assert Counter(sample["label"]) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_validation_and_test_files(tmp_path, topics_csv):
    validation = write_csv(tmp_path / "dev.csv", ["topic", "body", "headline"],
                           [["art", "b", "h"], ["sports", "b2", "h2"]])  # other column order is fine
    test = write_csv(tmp_path / "test.csv", ["headline", "body"], [["h", "b"]])  # no labels: predictions only
    data = load_task_data(own(topics_csv, validation_file=str(validation), test_file=str(test)))
    assert len(data.train) == 40 and data.evaluation["label"] == [0, 3]
    assert data.evaluation_set.startswith(f"'{validation}'")
    assert "label" not in data.test.column_names and len(data.test) == 1


def test_integer_labels_keep_numeric_order(tmp_path):
    path = write_csv(tmp_path / "stars.csv", ["text", "stars"], [[f"t{i}", s] for i, s in enumerate([10, 2, 1, 2, 10, 1] * 3)])
    data = load_task_data(RunConfig(train_file=str(path), text_columns="text", label_column="stars"))
    assert data.task.label_names == ("1", "2", "10") and not data.task.is_regression


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_every_format_reads_the_same(tmp_path, fmt):
    import pandas as pd

    frame = pd.DataFrame({"text": [f"row {i}" for i in range(10)], "y": ["yes", "no"] * 5})
    path = tmp_path / f"data.{fmt}"
    if fmt in ("csv", "tsv"):
        frame.to_csv(path, index=False, sep="\t" if fmt == "tsv" else ",")
    elif fmt == "json":
        path.write_text(frame.to_json(orient="records"))
    elif fmt == "jsonl":
        path.write_text(frame.to_json(orient="records", lines=True))
    else:
        frame.to_parquet(path)
    data = load_task_data(RunConfig(train_file=str(path), text_columns="text", label_column="y"))
    assert data.task.label_names == ("no", "yes")
    rows = sorted(zip(data.train["idx"][:] + data.evaluation["idx"][:], data.train["text"][:] + data.evaluation["text"][:]))
    assert [text for _, text in rows] == list(frame["text"])


def test_regression_from_float_targets_or_when_asked(tmp_path):
    path = write_jsonl(tmp_path / "scores.jsonl", scores())
    data = load_task_data(RunConfig(train_file=str(path), text_columns="sentence", label_column="score"))
    assert data.task.is_regression and data.task.label_names is None and data.task.num_labels == 1
    assert data.task.metrics == ("pearson", "spearmanr") and data.task.main_metric == "spearmanr"
    assert data.train.features["label"].dtype == "float32"
    assert sorted(data.train["label"][:] + data.evaluation["label"][:]) == pytest.approx([i / 7 for i in range(30)])

    integers = write_jsonl(tmp_path / "ints.jsonl", [{"sentence": f"s{i}", "score": i % 5} for i in range(20)])
    as_labels = load_task_data(RunConfig(train_file=str(integers), text_columns="sentence", label_column="score"))
    assert as_labels.task.label_names == ("0", "1", "2", "3", "4")  # integers are labels unless asked
    asked = load_task_data(RunConfig(train_file=str(integers), text_columns="sentence", label_column="score",
                                     problem_type="regression", metric="pearson"))
    assert asked.task.is_regression and asked.task.main_metric == "pearson"


def test_binary_labels_report_f1_and_metric_picks_the_main_one(tmp_path):
    path = write_csv(tmp_path / "spam.csv", ["text", "label"], [[f"t{i}", ["ham", "spam"][i % 2]] for i in range(10)])
    task = load_task_data(RunConfig(train_file=str(path), text_columns="text", metric="f1")).task
    assert task.metrics == ("accuracy", "f1", "macro_f1", "matthews_correlation") and task.main_metric == "f1"
    # f1 is the second label's (spam); macro_f1 the mean over both
    metrics = compute_metrics(task, [1, 1, 0, 0], [1, 0, 0, 0])
    assert metrics["accuracy"] == 0.75 and metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["matthews_correlation"] == pytest.approx(0.5773502691896258)
    assert constant_prediction_score(task, {"label": [0, 0, 1]}) == 0.0  # F1 of always "ham"


def test_own_regression_metrics():
    from blo_mixup.data import TaskSpec

    task = TaskSpec("s", "", ("t",), None, True, "spearmanr", ("pearson", "spearmanr"), "validation", source="data")
    metrics = compute_metrics(task, [[0.1], [0.4], [0.3]], [1.0, 3.0, 2.0])
    assert metrics["spearmanr"] == pytest.approx(1.0) and 0.9 < metrics["pearson"] < 1.0
    assert compute_metrics(task, [2.0, 2.0, 2.0], [1.0, 3.0, 2.0]) == {"pearson": 0.0, "spearmanr": 0.0}


def test_hub_dataset_offline_is_a_user_error():
    with pytest.raises(UserError, match=r"could not load the hub dataset someone/reviews .*--train-file"):
        load_task_data(RunConfig(dataset="someone/reviews", text_columns="text"))


def test_hub_dataset_splits_and_class_names(monkeypatch):
    """A hub dataset's ClassLabel names are its labels; its validation split is the evaluation set (faked hub)."""
    import datasets

    def fake(name, config):
        assert (name, config) == ("someone/reviews", "en")
        features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
        split = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}, features=features)
        return datasets.DatasetDict(train=split, validation=split.select([0, 1]))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_task_data(RunConfig(dataset="someone/reviews", dataset_config="en", text_columns="text"))
    assert data.task.name == "reviews-en" and data.task.label_names == ("neg", "pos")
    assert len(data.train) == 4 and data.evaluation["label"] == [0, 1]


def test_own_data_named_like_a_glue_task_keeps_its_own_name(tmp_path):
    path = write_csv(tmp_path / "rte.csv", ["text", "label"], [[f"t{i}", i % 2] for i in range(10)])
    data = load_task_data(RunConfig(train_file=str(path), text_columns="text"))
    assert data.task.name == "rte-data" and get_task("rte").source == "glue"


def test_text_columns_are_found_when_the_file_leaves_no_doubt(tmp_path):
    one = write_csv(tmp_path / "one.csv", ["review", "label"], [[f"review {i}", str(i % 2)] for i in range(10)])
    assert load_task_data(RunConfig(train_file=str(one))).task.text_columns == ("review",)
    with_idx = write_csv(tmp_path / "idx.csv", ["idx", "stars", "review"], [[str(i), str(i % 2), f"r {i}"] for i in range(10)])
    assert load_task_data(RunConfig(train_file=str(with_idx), label_column="stars")).task.text_columns == ("review",)
    pair = write_csv(tmp_path / "pair.csv", ["hypothesis", "premise", "label", "source"],
                     [[f"h {i}", f"p {i}", str(i % 2), "web"] for i in range(10)])
    assert load_task_data(RunConfig(train_file=str(pair))).task.text_columns == ("premise", "hypothesis")
    two = write_csv(tmp_path / "two.csv", ["title", "body", "label"], [[f"t {i}", f"b {i}", str(i % 2)] for i in range(10)])
    with pytest.raises(UserError, match=r"no --text-columns given; .*found: title, body, label"):
        load_task_data(RunConfig(train_file=str(two)))


# ----------------------------------------------------------------------------------- bad data


def bad(tmp_path, case):
    """(RunConfig, words the one-line error must hold) for each bad-data case."""
    header, rows = ["headline", "body", "topic", "extra"], topic_rows(20)
    csv_path = tmp_path / "topics.csv"
    options = {}
    if case == "missing_column":
        header = ["headline", "text", "topic", "extra"]
        words = ["no column 'body'", "found: headline, text, topic, extra", "--text-columns"]
    elif case == "no_text_columns_option":
        options["text_columns"] = None
        words = ["no --text-columns", "found: headline, body, topic, extra"]
    elif case == "empty_text":
        rows[4][1] = "  "
        words = ["row 5", "column 'body' is empty", "fill in the text"]
    elif case == "missing_text":
        path = write_jsonl(tmp_path / "t.jsonl", [{"headline": "h", "body": "b", "topic": "a"},
                                                   {"headline": None, "body": "b", "topic": "b"}])
        return own(path), ["row 2", "column 'headline' is empty"]
    elif case == "missing_label":
        rows[2][2] = ""
        words = ["row 3", "label in column 'topic' is missing", "fill in every label"]
    elif case == "unseen_validation_label":
        validation = write_csv(tmp_path / "dev.csv", header, [["h", "b", "art", ""], ["h", "b", "music", ""]])
        options["validation_file"] = str(validation)
        words = ["dev.csv' row 2", "label 'music' never occurs in the training data", "art, politics, science, sports"]
    elif case == "unseen_test_label":
        test = write_csv(tmp_path / "test.csv", header, [["h", "b", "Art", ""]])
        options["test_file"] = str(test)
        words = ["test.csv' row 1", "label 'Art' never occurs"]
    elif case == "single_class":
        rows = [[h, b, "sports", e] for h, b, _, e in rows]
        words = ["every row has the label 'sports'", "at least 2 labels", "--label-column"]
    elif case in ("nan_target", "inf_target", "text_target"):
        value = {"nan_target": "nan", "inf_target": "inf", "text_target": "n/a"}[case]
        rows = [[f"t{i}", f"{i / 3:.3f}"] for i in range(10)]
        rows[6][1] = value
        write_csv(csv_path, ["text", "score"], rows)
        words = ["row 7", value] + (["not a number"] if case == "text_target" else ["not finite", "finite number"])
        return RunConfig(train_file=str(csv_path), text_columns="text", label_column="score"), words
    elif case == "malformed_csv":
        write_csv(csv_path, header, rows)
        with open(csv_path, "a") as f:
            f.write("a,b,sports,x,one too many\n")
        return own(csv_path), ["could not be read as CSV", "fields", "fix the file"]
    elif case == "bad_json":
        path = tmp_path / "t.json"
        path.write_text('[{"headline": "h", "body": "b", "topic": "a"}, {"headline": ')
        return own(path), ["could not be read as JSON", "fix the file"]
    elif case == "encoding":
        path = tmp_path / "latin.csv"
        path.write_bytes("headline,body,topic\ncaf\xe9,b,art\n".encode("latin-1"))
        return own(path), ["is not UTF-8 text", "line 2", "save it as UTF-8"]
    elif case == "missing_file":
        return own(tmp_path / "nowhere.csv"), ["--train-file", "nowhere.csv' does not exist"]
    elif case == "unknown_format":
        path = tmp_path / "data.xlsx"
        path.write_text("x")
        return own(path), ["unknown format", ".xlsx", ".csv, .tsv, .json, .jsonl or .parquet"]
    elif case == "empty_file":
        path = tmp_path / "empty.csv"
        path.write_text("\n")
        return own(path), ["is empty"]
    elif case == "header_only":
        rows = []
        words = ["has no data rows"]
    elif case == "too_few_to_hold_out":
        rows = rows[:2]
        words = ["has 2 rows", "too few to hold out", "--validation-file"]
    elif case == "bad_metric":
        options["metric"] = "pearson"
        words = ["--metric pearson", "classification with 4 labels", "accuracy, macro_f1, matthews_correlation"]
    else:
        raise ValueError(case)
    write_csv(csv_path, header, rows)
    return own(csv_path, **options), words


BAD_CASES = ["missing_column", "no_text_columns_option", "empty_text", "missing_text", "missing_label",
             "unseen_validation_label", "unseen_test_label", "single_class", "nan_target", "inf_target", "text_target",
             "malformed_csv", "bad_json", "encoding", "missing_file", "unknown_format", "empty_file", "header_only",
             "too_few_to_hold_out", "bad_metric"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_is_one_user_error_naming_file_row_and_fix(tmp_path, case):
    run, words = bad(tmp_path, case)
    with pytest.raises(UserError) as error:
        load_task_data(run)
    message = str(error.value)
    assert "\n" not in message and ";" in message, message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("options, words", [
    (dict(task="rte", train_file="a.csv"), ["--task and --train-file are two sources of data"]),
    (dict(), ["no data given", "--train-file"]),
    (dict(task="rte", text_columns="a"), ["--text-columns describes your own data"]),
    (dict(task="rte", label_column="y"), ["--label-column describes your own data"]),
    (dict(train_file="a.csv", data_dir="glue"), ["--data-dir is the GLUE folder"]),
    (dict(train_file="a.csv", validation_ratio=1.0), ["--validation-ratio"]),
])
def test_data_options_that_do_not_fit_together(options, words):
    with pytest.raises(UserError) as error:
        validate_run_config(RunConfig(**options))
    for word in words:
        assert word in str(error.value)


def test_metric_is_checked_against_the_problem(tmp_path):
    path = write_jsonl(tmp_path / "scores.jsonl", scores())
    with pytest.raises(UserError, match=r"--metric accuracy is not a metric of regression; choose one of: pearson, spearmanr"):
        load_task_data(RunConfig(train_file=str(path), text_columns="sentence", label_column="score", metric="accuracy"))
