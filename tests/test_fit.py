"""blo_mixup.fit: the whole method from Python, with the command's options and data checks, on a tiny BERT:
a DataFrame of text pairs with four string labels (vanilla and blo-mixup), a JSONL file for regression, a
model object, the options' errors, bad data as the command reports it, and examples/fit_own_data.py."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import blo_mixup
from blo_mixup import UserError
from blo_mixup.config import RunConfig
from blo_mixup.data import get_task
from blo_mixup.datafiles import load_task_data
from blo_mixup.datafiles import in_memory_table, task_data_from_tables
from blo_mixup.metrics import compute_metrics
from test_cli import run_main
from test_datafiles import TOPICS, scores, topic_rows, write_csv, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(epochs=1, batch_size=8, max_length=32)
COLUMNS = ["headline", "body", "topic", "extra"]
LABELS = {0: "art", 1: "politics", 2: "science", 3: "sports"}


def topics_frame(rows=40, start=0) -> pd.DataFrame:
    return pd.DataFrame(topic_rows(start + rows)[start:], columns=COLUMNS)


def outputs_on(result, texts, max_length=32):
    """The returned model's logits (or scores) on texts: a list per text column."""
    encoded = result.tokenizer(*texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = result.model(**encoded.to(result.model.device)).logits.float().cpu()
    return logits.squeeze(-1).numpy() if logits.shape[-1] == 1 else logits.numpy()


def assert_plain_model(model, tmp_path):
    from torch.nn.utils import parametrize

    assert not blo_mixup.is_mixed(model)
    assert not any(parametrize.is_parametrized(module) for module in model.modules())
    model.save_pretrained(tmp_path / "saved")  # refused while mixup is attached
    assert (tmp_path / "saved" / "config.json").is_file()


@pytest.mark.parametrize("method", ["vanilla", "blo-mixup", "interpolate", "fixed-attention"])
def test_dataframe_with_four_string_labels(method, tiny_bert_dir, tmp_path, one_thread):
    train, evaluation = topics_frame(40), topics_frame(12, start=40)
    result = blo_mixup.fit(str(tiny_bert_dir), train, evaluation, method=method, output_dir=tmp_path / "run",
                           text_columns=["headline", "body"], label_column="topic", seed=3, **QUICK)
    assert isinstance(result, blo_mixup.FitResult)
    assert result.output_dir == tmp_path / "run"
    on_disk = json.loads((result.output_dir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(result.results))
    assert result.results["method"] == method and result.results["seed"] == 3
    assert result.results["labels"] == list(LABELS.values()) and result.results["train_size"] == 40
    assert result.results["evaluation_size"] == 12 and result.results["config"]["text_columns"] == "headline,body"
    assert result.metrics == result.results["metrics"]
    assert set(result.metrics) == {"accuracy", "macro_f1", "matthews_correlation"}
    assert result.model.config.id2label == LABELS
    assert result.model.config.label2id == {v: k for k, v in LABELS.items()}
    assert_plain_model(result.model, tmp_path)

    # the returned model's predictions on the evaluation set are the run's metrics
    logits = outputs_on(result, [list(evaluation["headline"]), list(evaluation["body"])])
    references = [list(LABELS.values()).index(topic) for topic in evaluation["topic"]]
    assert compute_metrics(get_task(result.results["task"]), logits, references) == pytest.approx(result.metrics)
    predicted = pd.read_csv(result.output_dir / "predictions.csv")
    assert list(predicted["prediction"]) == [LABELS[i] for i in logits.argmax(-1)]

    if method != "blo-mixup":  # the controls' attention is a fixed scalar, recorded in their own entries
        assert result.attention is None
    else:
        assert result.attention == result.results["blo"]["attention"]
        from transformers import AutoModelForSequenceClassification

        from blo_mixup.blo.mixup import target_module_names

        assert list(result.attention) == target_module_names(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir))
        for stats in result.attention.values():
            assert set(stats) == {"mean", "std", "min", "max"} and 0 <= stats["min"] <= stats["max"] <= 1
    assert "FitResult(model=BertForSequenceClassification" in repr(result)


def test_jsonl_file_regression_into_a_temporary_folder(tiny_bert_dir, tmp_path, monkeypatch, one_thread):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the "temporary folder" of output_dir=None
    path = write_jsonl(tmp_path / "scores.jsonl", scores(30))
    result = blo_mixup.fit(tiny_bert_dir, path, method="vanilla", text_columns="sentence", label_column="score",
                           **QUICK)
    assert result.output_dir.parent == tmp_path and result.output_dir.name.startswith("blo-mixup-fit-")
    assert (result.output_dir / "model" / "config.json").is_file()
    assert result.results["task"] == "scores" and result.results["problem_type"] == "regression"
    assert result.results["config"]["train_file"] == str(path)
    assert set(result.metrics) == {"pearson", "spearmanr"} and result.attention is None
    assert result.model.config.problem_type == "regression" and result.model.config.num_labels == 1
    assert_plain_model(result.model, tmp_path)
    # the held-out evaluation set is the command's (the same rows every time): the metrics reproduce on it
    held_out = load_task_data(RunConfig(train_file=str(path), text_columns="sentence", label_column="score")).evaluation
    assert len(held_out) == result.results["evaluation_size"] == 6
    outputs = outputs_on(result, [held_out["sentence"][:]])
    assert compute_metrics(get_task("scores"), outputs, held_out["label"][:]) == pytest.approx(result.metrics, abs=1e-5)


def test_a_model_object_gets_the_task_head_and_is_left_alone(tiny_bert_dir, tmp_path, one_thread):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)  # a 2-label head
    encoder = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    result = blo_mixup.fit(model, topics_frame(24), method="vanilla", output_dir=tmp_path / "run",
                           text_columns="headline,body", label_column="topic", lr=1e-3, **QUICK)
    assert result.model is not model and result.model.config.id2label == LABELS
    assert result.model.classifier.out_features == 4  # a new head for four labels, as --model FOLDER gets
    assert model.classifier.out_features == 2 and model.config.num_labels == 2  # the object passed is unchanged
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, encoder)
    assert not torch.equal(result.model.bert.encoder.layer[0].attention.self.query.weight.cpu(), encoder)
    assert result.results["config"]["model"].startswith("<BertForSequenceClassification given to fit()")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["model"] == result.results["config"]["model"]


# ----------------------------------------------------------------------------------- options and errors


def test_unknown_option_is_refused_with_a_suggestion(tiny_bert_dir, tmp_path):
    with pytest.raises(UserError, match=r"unknown option 'lrr' in fit\(\) \(did you mean 'lr'\?\)"):
        blo_mixup.fit(tiny_bert_dir, topics_frame(), text_columns="headline", label_column="topic", lrr=1e-4)
    with pytest.raises(UserError, match=r"unknown option 'unrol_steps' in fit\(\) \(did you mean 'unroll_steps'\?\)"):
        blo_mixup.fit(tiny_bert_dir, topics_frame(), unrol_steps=5)
    assert not list(tmp_path.iterdir())


def test_an_option_of_another_method_is_refused_as_on_the_command_line(tiny_bert_dir, tmp_path, capsys):
    with pytest.raises(UserError) as error:
        blo_mixup.fit(tiny_bert_dir, topics_frame(), method="vanilla", text_columns="headline",
                      label_column="topic", hypergradient="neumann")
    assert str(error.value) == ("option 'hypergradient' belongs to method blo-mixup, blo-mixup-fast, blo-mixup-paper, "
                                "not 'vanilla'; drop it or pass method='blo-mixup'")
    cli = run_main(capsys, "finetune", "--train-file", "x.csv", "--method", "vanilla", "--hypergradient", "neumann")
    assert "option --hypergradient belongs to method blo-mixup, blo-mixup-fast, blo-mixup-paper, not 'vanilla'" in cli.stderr


@pytest.mark.parametrize("options, words", [
    (dict(train_file="a.csv"), "option 'train_file' names where the data comes from"),
    (dict(task="rte"), "option 'task' names where the data comes from"),
    (dict(strategy="distributed"), "fit() trains in one process"),
    (dict(lr=-1), "--lr must be positive"),
    (dict(epochs="three"), "option 'epochs' in the run options must be of type float"),
    (dict(hypergradient="darts2"), "unknown hypergradient 'darts2'"),
    (dict(problem_type="ordinal"), "--problem-type must be one of: classification, regression"),
])
def test_bad_options(tiny_bert_dir, options, words):
    with pytest.raises(UserError) as error:
        blo_mixup.fit(tiny_bert_dir, topics_frame(), text_columns="headline", label_column="topic", **options)
    assert words in str(error.value)


def test_bad_inputs():
    with pytest.raises(UserError, match="train is a list; pass a pandas DataFrame"):
        blo_mixup.fit("minilm", [{"text": "a"}], text_columns="text")
    with pytest.raises(UserError, match="model is a Linear"):
        blo_mixup.fit(torch.nn.Linear(2, 2), topics_frame(), text_columns="headline", label_column="topic")
    with pytest.raises(UserError, match="the train DataFrame has no data rows"):
        blo_mixup.fit("minilm", topics_frame().iloc[:0], text_columns="headline", label_column="topic")


def test_a_dataframe_missing_a_column_gives_the_commands_error(tiny_bert_dir, tmp_path, capsys):
    frame = topics_frame().rename(columns={"body": "text"})
    with pytest.raises(UserError) as error:
        blo_mixup.fit(tiny_bert_dir, frame, output_dir=tmp_path / "run", text_columns="headline,body",
                      label_column="topic")
    assert not (tmp_path / "run").exists()  # checked before anything is written
    path = tmp_path / "topics.csv"
    frame.to_csv(path, index=False)
    cli = run_main(capsys, "finetune", "--train-file", path, "--text-columns", "headline,body",
                   "--label-column", "topic", "--model", tiny_bert_dir, "--output-dir", tmp_path / "cli")
    assert cli.returncode == 2
    message = str(error.value)
    assert message.startswith("the train DataFrame has no column 'body' (found: headline, text, topic, extra)")
    assert cli.stderr.strip() == f"blo-mixup: error: '{path}'" + message.removeprefix("the train DataFrame")


def bad_frame(case):
    """(train rows, eval rows or None) of topic pairs with one defect."""
    rows, evaluation = topic_rows(20), None
    if case == "empty_text":
        rows[4][1] = "  "
    elif case == "missing_label":
        rows[6][2] = ""
    elif case == "single_class":
        rows = [[a, b, "art", x] for a, b, _, x in rows]
    elif case == "unseen_eval_label":
        evaluation = [["h", "b", "music", "x"], ["h2", "b2", "art", "x"]]
    return rows, evaluation


@pytest.mark.parametrize("case", ["empty_text", "missing_label", "single_class", "unseen_eval_label"])
def test_in_memory_data_fails_as_the_same_file_does(tmp_path, case):
    """A DataFrame (or a datasets.Dataset) goes through the checks of --train-file: the same error, named
    after the DataFrame instead of the file."""
    import datasets

    rows, evaluation = bad_frame(case)
    train_path = write_csv(tmp_path / "train.csv", COLUMNS, rows)
    eval_path = write_csv(tmp_path / "eval.csv", COLUMNS, evaluation) if evaluation else None
    run = RunConfig(train_file=str(train_path), validation_file=str(eval_path) if eval_path else None,
                    text_columns="headline,body", label_column="topic")
    with pytest.raises(UserError) as from_file:
        load_task_data(run)
    for kind in (pd.DataFrame, datasets.Dataset.from_pandas):
        train = in_memory_table(kind(pd.DataFrame(rows, columns=COLUMNS)), "train")
        validation = in_memory_table(kind(pd.DataFrame(evaluation, columns=COLUMNS)), "eval") if evaluation else None
        with pytest.raises(UserError) as from_memory:
            task_data_from_tables(run, "data", train, validation)
        file_message = str(from_file.value).replace(f"'{train_path}'", train[1]).replace(f"'{eval_path}'", str(validation and validation[1]))
        assert str(from_memory.value) == file_message


def test_in_memory_data_makes_the_same_task_as_the_file(tmp_path):
    frame = topics_frame(40)
    path = tmp_path / "topics.csv"
    frame.to_csv(path, index=False)
    run = RunConfig(train_file=str(path), text_columns="headline,body", label_column="topic")
    from_file = load_task_data(run)
    from_frame = task_data_from_tables(run, "topics", in_memory_table(frame, "train"))
    assert from_frame.task == from_file.task and from_frame.task.label_names == tuple(sorted(TOPICS))
    assert from_frame.train[:] == from_file.train[:] and from_frame.evaluation[:] == from_file.evaluation[:]


# ----------------------------------------------------------------------------------- the examples


def test_the_readme_example_runs(tiny_bert_dir, tmp_path, monkeypatch, one_thread, capsys):
    """README's "In Python" block, as written, on a reviews.csv with the tiny BERT and one epoch."""
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in readme.split("```python\n")[1:] if "blo_mixup.fit(" in b).split("```")[0]
    assert '"minilm"' in block and "epochs=3" in block
    code = block.replace('"minilm"', repr(str(tiny_bert_dir))).replace("epochs=3", "epochs=1, batch_size=8, max_length=32")
    monkeypatch.chdir(tmp_path)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ratings = ["bad", "ok", "good"]
    pd.DataFrame({"review": [f"a {ratings[i % 3]} film, number {i}" for i in range(30)],
                  "rating": [ratings[i % 3] for i in range(30)]}).to_csv("reviews.csv", index=False)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "accuracy" in capsys.readouterr().out
    assert namespace["result"].results["evaluation_size"] == 6 and namespace["result"].attention is not None
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "reviews-model").id2label == {0: "bad", 1: "good", 2: "ok"}


def test_the_example_runs(tiny_bert_dir, tmp_path, one_thread, capsys):
    spec = importlib.util.spec_from_file_location("fit_own_data", ROOT / "examples" / "fit_own_data.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--model", str(tiny_bert_dir), "--epochs", "1", "--rows", "20",
                           "--save", str(tmp_path / "model"), "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "evaluation set: accuracy" in out and "mixup attention over 13 weights" in out  # 2 x 6 in the layers, the pooler
    assert result.results["method"] == "blo-mixup"

    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert saved.config.id2label == LABELS
