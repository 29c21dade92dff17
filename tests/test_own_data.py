"""Your own data end to end through the `blo-mixup` command on a tiny model: finetune, predict, compare and
bench from files; the saved model carries the user's labels; bad data is one line and exit code 2."""

import csv
import json

import pytest

from blo_mixup.cli import main
from test_cli import assert_one_line_error, run_main
from test_datafiles import BAD_CASES, TOPICS, bad, scores, topic_rows, write_csv, write_jsonl

QUICK = ["--epochs", "1", "--batch-size", "8", "--max-length", "32"]


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def topics_csv(tmp_path):
    return write_csv(tmp_path / "topics.csv", ["headline", "body", "topic", "extra"], topic_rows())


def test_csv_with_four_string_labels_finetune_then_predict(topics_csv, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_main(capsys, "finetune", "--train-file", topics_csv, "--text-columns", "headline,body",
                      "--label-column", "topic", "--metric", "macro_f1", "--model", tiny_bert_dir,
                      "--output-dir", out, *QUICK)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "topics" and results["problem_type"] == "classification"
    assert results["labels"] == ["art", "politics", "science", "sports"]
    assert results["text_columns"] == ["headline", "body"]
    assert results["train_size"] == 32  # every training row by default: 40 rows minus 8 held out
    assert results["config"]["train_size"] == 0
    assert results["evaluation_size"] == 8 and "held out" in results["evaluation_set"]
    assert results["main_metric"] == "macro_f1" and results["main_score"] == results["metrics"]["macro_f1"]
    assert set(results["metrics"]) == {"accuracy", "macro_f1", "matthews_correlation"}

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out / "model")
    assert config.id2label == {0: "art", 1: "politics", 2: "science", 3: "sports"}
    assert config.label2id == {"art": 0, "politics": 1, "science": 2, "sports": 3}

    # the evaluation set's predictions, in the run folder
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 8
    assert list(rows[0]) == ["row", "headline", "body", "topic", "prediction", "prob_art", "prob_politics",
                             "prob_science", "prob_sports"]
    for row in rows:
        assert row["topic"] == TOPICS[(int(row["row"]) - 1) % 4]  # the gold label of that row of the file
        assert row["prediction"] in TOPICS
    accuracy = sum(r["prediction"] == r["topic"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(results["metrics"]["accuracy"])

    # predict on a file without the label column: one row per input row, in order, labels of the user's set
    new = write_csv(tmp_path / "new.csv", ["body", "headline", "id"],
                    [[f"about sports {i}", f"news {i}, today", f"00{i}"] for i in range(11)])
    result = run_main(capsys, "predict", out, "--file", new, "--output", tmp_path / "pred.csv", "--batch-size", 4)
    assert result.returncode == 0, result.stderr
    predicted = read_csv(tmp_path / "pred.csv")
    assert [r["id"] for r in predicted] == [f"00{i}" for i in range(11)]  # input rows kept as written
    assert all(r["prediction"] in TOPICS for r in predicted)
    for r in predicted:
        probabilities = [float(r[f"prob_{label}"]) for label in sorted(TOPICS)]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert r["prediction"] == sorted(TOPICS)[probabilities.index(max(probabilities))]

    # the exported model predicts the same, given the text columns
    assert main(["export", str(out), str(tmp_path / "exported")]) == 0
    result = run_main(capsys, "predict", tmp_path / "exported", "--file", new, "--text-columns", "headline,body",
                      "--output", tmp_path / "pred2.jsonl")
    assert result.returncode == 0, result.stderr
    again = [json.loads(line) for line in (tmp_path / "pred2.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in again] == [r["prediction"] for r in predicted]


def test_jsonl_regression_with_one_text_column(tmp_path, tiny_bert_dir, capsys):
    train = write_jsonl(tmp_path / "scores.jsonl", scores())
    test = write_jsonl(tmp_path / "test.jsonl", [{"sentence": "a new sentence"}, {"sentence": "another"}])
    out = tmp_path / "run"
    result = run_main(capsys, "finetune", "--train-file", train, "--text-columns", "sentence", "--label-column",
                      "score", "--test-file", test, "--model", tiny_bert_dir, "--output-dir", out, *QUICK)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["problem_type"] == "regression" and results["labels"] is None
    assert set(results["metrics"]) == {"pearson", "spearmanr"} and results["main_metric"] == "spearmanr"
    assert results["test_size"] == 2 and results["test_metrics"] is None  # the test file has no scores
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out / "model")
    assert config.problem_type == "regression" and config.num_labels == 1
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 6 and list(rows[0]) == ["row", "sentence", "score", "prediction"]
    assert all(float(r["score"]) == pytest.approx((int(r["row"]) - 1) / 7, abs=1e-6) for r in rows)
    test_rows = read_csv(out / "test_predictions.csv")
    assert [r["sentence"] for r in test_rows] == ["a new sentence", "another"]

    result = run_main(capsys, "predict", out, "--file", test, "--output", tmp_path / "pred.csv")
    assert result.returncode == 0, result.stderr
    predicted = read_csv(tmp_path / "pred.csv")
    assert list(predicted[0]) == ["sentence", "prediction"] and len(predicted) == 2
    assert [float(r["prediction"]) for r in predicted] == pytest.approx([float(r["prediction"]) for r in test_rows], abs=1e-5)


def test_glue_runs_write_predictions_too(glue_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", "--task", "rte", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir),
                 "--train-size", "16", "--output-dir", str(out), "--no-save-model", *QUICK]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["train_size"] == 16 and results["labels"] == ["entailment", "not_entailment"]
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 80 and rows[0]["row"] == "1" and rows[0]["label"] in ("entailment", "not_entailment")


def test_glue_default_train_size_is_still_300(glue_dir, tiny_bert_dir):
    from blo_mixup.cli import build_parser, resolve_finetune

    args = build_parser().parse_args(["finetune", "--task", "rte", "--data-dir", str(glue_dir)])
    run, _ = resolve_finetune(args)
    assert run.train_size == 300


def test_compare_and_bench_take_the_same_data_options(topics_csv, tiny_bert_dir, tmp_path, capsys):
    data = ["--train-file", str(topics_csv), "--text-columns", "headline,body", "--label-column", "topic"]
    out = tmp_path / "cmp"
    assert main(["compare", *data, "--methods", "vanilla", "--seeds", "1", "--model", str(tiny_bert_dir),
                 "--output-dir", str(out), "--no-save-model", *QUICK]) == 0
    results = json.loads((out / "runs" / "topics" / "vanilla" / "seed1" / "results.json").read_text())
    assert results["labels"] == ["art", "politics", "science", "sports"]
    assert "topics (accuracy)" in (out / "summary.md").read_text()

    capsys.readouterr()
    assert main(["bench", *data, "--model", str(tiny_bert_dir), "--methods", "vanilla", "--steps", "1", "--warmup", "0",
                 "--no-memory", "--batch-size", "4", "--max-length", "16", "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["whole_run"]["train_size"] == 32  # the data's training rows


def test_bench_batches_are_the_datas_rows(topics_csv, tiny_bert_dir):
    from transformers import AutoTokenizer

    from blo_mixup.bench import BenchOptions, data_batches
    from blo_mixup.datafiles import load_task_data

    options = BenchOptions(train_file=str(topics_csv), text_columns="headline,body", label_column="topic",
                           batch_size=4, max_length=16)
    data = load_task_data(options)
    batches = data_batches(data.train, AutoTokenizer.from_pretrained(tiny_bert_dir), data.task, options, 2, offset=0)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(4, 16), (4, 16)]
    assert batches[1]["labels"].tolist() == data.train["label"][4:8]


# ----------------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_gives_one_line_exit_2_and_writes_nothing(case, tiny_bert_dir, tmp_path, capsys):
    run, words = bad(tmp_path, case)
    args = ["finetune", "--train-file", run.train_file, "--label-column", run.label_column,
            "--model", tiny_bert_dir, "--output-dir", tmp_path / "out", *QUICK]
    for flag, value in (("--text-columns", run.text_columns), ("--validation-file", run.validation_file),
                        ("--test-file", run.test_file), ("--metric", run.metric)):
        if value is not None:
            args += [flag, value]
    result = run_main(capsys, *args)
    assert_one_line_error(result, *words)
    assert not (tmp_path / "out").exists()


def files_under(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_bad_data_leaves_a_finished_run_alone(topics_csv, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--train-file", topics_csv, "--text-columns", "headline,body", "--label-column", "topic",
            "--model", tiny_bert_dir, "--output-dir", out, "--no-save-model", *QUICK]
    assert run_main(capsys, *args).returncode == 0
    before = files_under(out)
    rows = topic_rows()
    rows[0][2] = ""
    write_csv(topics_csv, ["headline", "body", "topic", "extra"], rows)
    assert_one_line_error(run_main(capsys, *args, "--overwrite"), "row 1", "missing")
    assert files_under(out) == before  # logs/ included


@pytest.mark.parametrize("case, words", [
    ("no_model", ["holds no model", "run folder"]),
    ("output_exists", ["already exists", "--overwrite"]),
    ("missing_column", ["no column 'text'", "found: sentence"]),
    ("no_text_columns", ["does not say which columns hold the text", "--text-columns", "found: sentence"]),
    ("empty_text", ["row 2", "empty"]),
    ("bad_output", ["--output", ".csv, .tsv or .jsonl"]),
])
def test_predict_errors(case, words, tiny_bert_dir, tmp_path, capsys):
    file = write_jsonl(tmp_path / "in.jsonl", [{"sentence": "a"}, {"sentence": "" if case == "empty_text" else "b"}])
    model, output, extra = tiny_bert_dir, tmp_path / "out.csv", ["--text-columns", "sentence"]
    if case == "no_model":
        model = tmp_path
    elif case == "output_exists":
        output.write_text("keep me")
    elif case == "missing_column":
        extra = ["--text-columns", "text"]
    elif case == "no_text_columns":
        extra = []
    elif case == "bad_output":
        output = tmp_path / "out.xlsx"
    result = run_main(capsys, "predict", model, "--file", file, "--output", output, *extra)
    assert_one_line_error(result, *words)
    if case == "output_exists":
        assert output.read_text() == "keep me"
    else:
        assert not output.exists()


def test_compare_without_data_is_one_line(tmp_path, capsys):
    result = run_main(capsys, "compare", "--methods", "vanilla", "--output-dir", tmp_path / "cmp")
    assert_one_line_error(result, "no data given", "--tasks", "--train-file")
    assert not (tmp_path / "cmp").exists()
