"""The data of a run, and your own data as a task: CSV, TSV, JSON, JSONL and Parquet files, or a
Hugging Face hub dataset.

`load_task_data(run)` is the one entry point: a GLUE task (data.py) or your own data. `load_own_data(run)` reads --train-file (and --validation-file, --test-file) or --dataset through
`datasets`, checks every row and returns data.TaskData in the shape of a GLUE task: the text columns,
"label" (a ClassLabel over the labels found in the training data, or a float32 score) and "idx" (the
row's position in its file). docs/data.md describes the options and every error. Data given in Python
(blo_mixup.fit: a DataFrame or a datasets.Dataset) goes through the same checks: `in_memory_table`, then
`task_data_from_tables`, the one place where a user's data becomes a TaskSpec.

Errors name rows as "row N": the N-th record of the file counted from 1, the header not counted (in a
CSV or TSV without line breaks inside quoted fields: line N + 1).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import datasets

from .config import with_train_size
from .data import TaskData, TaskSpec, get_task, heldout_sample, is_glue_name, load_glue, register_own_data, subsample
from .errors import UserError

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "matthews_correlation")  # f1: with two labels only
REGRESSION_METRICS = ("pearson", "spearmanr")
SHAPES = {".csv": "a header line of column names, then one row per example",
          ".tsv": "a header line of tab-separated column names, then one row per example",
          ".json": "a list of records, one per example", ".jsonl": "one JSON record per line",
          ".parquet": "a Parquet table, one row per example"}
HELD_OUT_SEED = 0  # the held-out evaluation set is the same rows for every seed and method


def data_name(run) -> str:
    """The name a run's data goes by (results.json, run folders): the GLUE task, the training file's
    stem or the hub dataset's name; never a GLUE task's name for other data."""
    if run.task is not None:
        return run.task
    if run.train_file:
        name = Path(run.train_file).stem
    else:
        name = run.dataset.rstrip("/").split("/")[-1] + (f"-{run.dataset_config}" if run.dataset_config else "")
    return f"{name}-data" if is_glue_name(name) else name


# ------------------------------------------------------------------------------------ reading files


def read_table(path: str | Path, option: str) -> datasets.Dataset:
    """Every column of a data file, read through `datasets` (CSV and TSV: every value as text)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} '{path}' does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{option} '{path}' has an unknown format ('{suffix or 'no extension'}'); "
                        f"give a .csv, .tsv, .json, .jsonl or .parquet file")
    kind = suffix[1:].upper()
    kwargs = {}
    if suffix != ".parquet":
        _check_utf8(path)
    if suffix in (".csv", ".tsv"):
        separator = "\t" if suffix == ".tsv" else ","
        # Text everywhere: labels stay as written ("007"), and "NA" or "null" is text, not a missing value.
        kwargs = dict(sep=separator, encoding="utf-8-sig", keep_default_na=False, features=datasets.Features(
            {column: datasets.Value("string") for column in _header(path, separator)}))
    try:
        table = datasets.load_dataset(FORMATS[suffix], data_files=str(path.resolve()), split="train", **kwargs)
    except Exception as error:  # whatever the reader found wrong in this file
        if "corresponds to no data" in str(error):  # datasets' word for a file without rows
            raise UserError(f"'{path}' has no data rows; add examples to it") from None
        raise UserError(f"'{path}' could not be read as {kind} ({_reason(error)}); fix the file: {SHAPES[suffix]}") from None
    if len(table) == 0:
        raise UserError(f"'{path}' has no data rows; add examples to it")
    return table


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise UserError(f"'{path}' is not UTF-8 text (line {line}: byte 0x{raw[error.start]:02x}); "
                        f"save it as UTF-8") from None
    if not raw.strip():
        raise UserError(f"'{path}' is empty; put a header and examples in it")


def _header(path: Path, separator: str) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f, delimiter=separator), [])
    if "" in header:
        raise UserError(f"'{path}': column {header.index('') + 1} of the header has no name; name every column "
                        f"(the first line holds the column names)")
    twice = [column for column in header if header.count(column) > 1]
    if twice:
        raise UserError(f"'{path}': the header names column '{twice[0]}' twice; give every column its own name")
    return header


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause (datasets wraps what pandas or pyarrow said)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]


# ------------------------------------------------------------------------------------ checking rows


def _rows(indices: list[int]) -> str:
    """' (3 such rows: 4, 9, 12)' for more than one bad row, else ''."""
    if len(indices) < 2:
        return ""
    shown = ", ".join(str(i + 1) for i in indices[:5])
    return f" ({len(indices)} such rows: {shown}{' ...' if len(indices) > 5 else ''})"


# Text pairs found without --text-columns, as transformers' run_glue finds sentence1/sentence2.
KNOWN_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"))


def _text_columns(option: str | None, table: datasets.Dataset, where: str, label_column: str) -> tuple[str, ...]:
    """--text-columns, or when it is not given and the file leaves no doubt: its only column besides the label
    (and idx), or one of KNOWN_PAIRS."""
    found = ", ".join(table.column_names)
    if not option:
        others = [c for c in table.column_names if c not in (label_column, "idx")]
        if len(others) == 1:
            return (others[0],)
        for pair in KNOWN_PAIRS:
            if set(pair) <= set(others):
                return pair
        raise UserError(f"no --text-columns given; name the one or two text columns of {where} (found: {found})")
    columns = tuple(c.strip() for c in option.split(",") if c.strip())
    if not 1 <= len(columns) <= 2 or len(set(columns)) != len(columns):
        raise UserError(f"--text-columns '{option}' must name one or two different columns, like text or "
                        f"premise,hypothesis (found in {where}: {found})")
    for column in columns:
        if column in ("label", "idx"):
            raise UserError(f"text column '{column}' has a name blo-mixup uses itself; rename it in the file")
    return columns


def check_columns(table: datasets.Dataset, where: str, needed: list[str]) -> None:
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise UserError(f"{where} has no column {', '.join(repr(m) for m in missing)} (found: "
                        f"{', '.join(table.column_names)}); pass --text-columns / --label-column with its column names")


def read_texts(table: datasets.Dataset, columns, where: str) -> dict[str, list[str]]:
    texts = {}
    for column in columns:
        values = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in table[column][:]]
        empty = [i for i, text in enumerate(values) if not text.strip()]
        if empty:
            raise UserError(f"{where} row {empty[0] + 1}: the text in column '{column}' is empty{_rows(empty)}; "
                            f"fill in the text or delete the row")
        texts[column] = values
    return texts


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _label_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 2.0 from a float column is the label 2
    return str(value).strip()


def _label_order(text: str):
    """Numbers first, by value (so 2 before 10), then the other labels alphabetically."""
    number = _number(text)
    return (0, number, "") if number is not None and math.isfinite(number) else (1, 0.0, text)


def _raw_labels(table: datasets.Dataset, column: str, where: str) -> list:
    values = table[column][:]
    feature = table.features[column]
    if isinstance(feature, datasets.ClassLabel):  # a hub dataset's labels: use their names
        values = [feature.names[v] if v is not None and v >= 0 else None for v in values]
    _no_missing(values, where, column, nan=False)
    return values


def _no_missing(values: list, where: str, column: str, nan: bool) -> None:
    """Empty labels are an error; so is NaN where it cannot be a score (nan=True: classification)."""
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())
               or (nan and isinstance(v, float) and math.isnan(v))]
    if missing:
        raise UserError(f"{where} row {missing[0] + 1}: the label in column '{column}' is missing{_rows(missing)}; "
                        f"fill in every label or delete the row")


def _scores(values: list, where: str, column: str) -> list[float]:
    scores = [_number(v) for v in values]
    bad = [i for i, s in enumerate(scores) if s is None]
    if bad:
        raise UserError(f"{where} row {bad[0] + 1}: the target '{values[bad[0]]}' in column '{column}' is not a "
                        f"number{_rows(bad)}; regression needs a number in every row (or pass --problem-type "
                        f"classification for labels)")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise UserError(f"{where} row {bad[0] + 1}: the target in column '{column}' is {values[bad[0]]} (not finite)"
                        f"{_rows(bad)}; give a finite number or delete the row")
    return scores


def _class_indices(values: list, labels: tuple[str, ...], where: str, column: str) -> list[int]:
    _no_missing(values, where, column, nan=True)
    index_of = {label: i for i, label in enumerate(labels)}
    texts = [_label_text(v) for v in values]
    unseen = [i for i, text in enumerate(texts) if text not in index_of]
    if unseen:
        raise UserError(f"{where} row {unseen[0] + 1}: the label '{texts[unseen[0]]}' never occurs in the training "
                        f"data{_rows(unseen)} (its labels: {', '.join(labels)}); fix the label, or add examples "
                        f"of it to the training data")
    return [index_of[text] for text in texts]


def make_dataset(texts: dict[str, list[str]], labels: list | None, task: TaskSpec) -> datasets.Dataset:
    columns, features = dict(texts), {column: datasets.Value("string") for column in texts}
    if labels is not None:
        columns["label"] = labels
        features["label"] = (datasets.Value("float32") if task.is_regression
                             else datasets.ClassLabel(names=list(task.label_names)))
    columns["idx"] = list(range(len(next(iter(texts.values())))))
    features["idx"] = datasets.Value("int32")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# ------------------------------------------------------------------------------------ the task


def _load_hub(run) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The train split and the validation split (None when the dataset has none) of a hub dataset."""
    name = run.dataset + (f" ({run.dataset_config})" if run.dataset_config else "")
    try:
        splits = datasets.load_dataset(run.dataset, run.dataset_config)
    except Exception as error:  # offline, unknown name, missing config: what the hub said
        raise UserError(f"could not load the hub dataset {name} ({_reason(error)}); check the name and "
                        f"--dataset-config and that you are online, or save the data to a file and pass "
                        f"--train-file") from None
    if not isinstance(splits, datasets.DatasetDict) or "train" not in splits:
        raise UserError(f"the hub dataset {name} has no train split (splits: {', '.join(splits)}); "
                        f"save the data to a file and pass --train-file")
    validation = next((splits[s] for s in ("validation", "dev", "valid") if s in splits), None)
    return splits["train"], validation


def _metrics(run, regression: bool, labels) -> tuple[str, tuple[str, ...]]:
    if regression:
        metrics, main = REGRESSION_METRICS, "spearmanr"
    else:
        metrics = tuple(m for m in CLASSIFICATION_METRICS if m != "f1" or len(labels) == 2)
        main = "accuracy"
    if run.metric is not None and run.metric not in metrics:
        problem = "regression" if regression else f"classification with {len(labels)} labels"
        raise UserError(f"--metric {run.metric} is not a metric of {problem}; choose one of: {', '.join(metrics)}")
    return run.metric or main, metrics


def load_task_data(run) -> TaskData:
    """The data of a run (config.RunConfig): a GLUE task (--task), or your own (--train-file, --dataset)."""
    if run.task is not None:
        task = get_task(run.task)
        glue = load_glue(task, run.data_dir)
        if getattr(run, "heldout_size", None):  # bench's data options have no --heldout-size
            return TaskData(task, glue["train"], *glue_heldout(glue["train"], run, task))
        return TaskData(task, glue["train"], glue["validation"], f"the GLUE dev set ({task.dev_split})")
    return load_own_data(run)


def glue_heldout(train: datasets.Dataset, run, task) -> tuple[datasets.Dataset, str]:
    """(evaluation set, its description) for --heldout-size: training rows outside the seed's subsample,
    stratified, the same rows `blo-mixup curves` scores for that seed, so that a protocol or a method's
    options can be chosen without looking at the dev set that the tables report."""
    run = with_train_size(run)
    taken = subsample(train, run.train_size or None, run.seed, task)
    heldout = heldout_sample(train, taken, run.heldout_size, run.seed, task)
    return heldout, (f"held out from the GLUE train split: {len(heldout)} rows outside seed {run.seed}'s "
                     f"subsample (stratified), not the dev set")


def load_own_data(run) -> TaskData:
    """The task and data of --train-file / --validation-file / --test-file or --dataset (config.RunConfig)."""
    if run.train_file:
        train_table, train_where = read_table(run.train_file, "--train-file"), f"'{run.train_file}'"
        validation_table = None
    else:
        train_table, validation_table = _load_hub(run)
        train_where = f"hub dataset {run.dataset} (train split)"
    validation_where = f"hub dataset {run.dataset} (validation split)"
    if run.validation_file:
        validation_table, validation_where = read_table(run.validation_file, "--validation-file"), f"'{run.validation_file}'"
    return task_data_from_tables(run, data_name(run), (train_table, train_where),
                                 (validation_table, validation_where) if validation_table is not None else None)


def in_memory_table(data, role: str) -> tuple[datasets.Dataset, str]:
    """(table, its name in messages) of data given in Python (blo_mixup.fit): a datasets.Dataset, a pandas
    DataFrame, or a data file's path (read as --train-file reads it). role: "train" or "eval"."""
    import os

    if isinstance(data, (str, os.PathLike)):
        return read_table(data, role), f"'{data}'"
    if isinstance(data, datasets.DatasetDict):
        raise UserError(f"{role} is a DatasetDict (splits: {', '.join(data)}); pass one split, e.g. "
                        f"{role}=data['{next(iter(data), 'train')}']")
    if isinstance(data, datasets.Dataset):
        table, where = data, f"the {role} Dataset"
    else:
        import pandas as pd

        if not isinstance(data, pd.DataFrame):
            raise UserError(f"{role} is a {type(data).__name__}; pass a pandas DataFrame, a datasets.Dataset or "
                            f"the path of a .csv, .tsv, .json, .jsonl or .parquet file")
        where = f"the {role} DataFrame"
        names = [str(column) for column in data.columns]
        twice = [name for name in names if names.count(name) > 1]
        if twice:
            raise UserError(f"{where} has two columns named '{twice[0]}'; give every column its own name")
        try:
            table = datasets.Dataset.from_pandas(data.set_axis(names, axis=1), preserve_index=False)
        except Exception as error:  # pyarrow: a column of mixed types
            raise UserError(f"{where} could not be turned into a table ({_reason(error)}); give each column "
                            f"one type, e.g. frame[column].astype(str)") from None
    if len(table) == 0:
        raise UserError(f"{where} has no data rows; add examples to it")
    return table, where


def task_data_from_tables(run, name: str, train: tuple[datasets.Dataset, str],
                          validation: tuple[datasets.Dataset, str] | None = None) -> TaskData:
    """The task and data of tables already read, each with its name in messages: the one place where a
    user's data becomes a TaskSpec (labels found in training, regression detected, every row checked),
    whether it came from files, a hub dataset or Python (blo_mixup.fit). run gives the data options
    (text_columns, label_column, problem_type, metric, validation_ratio, test_file)."""
    column = run.label_column
    (train_table, train_where) = train
    validation_table, validation_where = validation if validation is not None else (None, None)
    test_table = read_table(run.test_file, "--test-file") if run.test_file else None
    test_where = f"'{run.test_file}'"

    text_columns = _text_columns(run.text_columns, train_table, train_where, column)
    if column in text_columns:
        raise UserError(f"column '{column}' is given as text and as the label; pass another --label-column "
                        f"or --text-columns")
    check_columns(train_table, train_where, [*text_columns, column])
    if validation_table is not None:
        check_columns(validation_table, validation_where, [*text_columns, column])
    if test_table is not None:  # its labels may be missing: then it is only predicted
        check_columns(test_table, test_where, list(text_columns))

    raw = _raw_labels(train_table, column, train_where)
    regression = run.problem_type == "regression" or (run.problem_type is None and any(
        (n := _number(v)) is not None and math.isfinite(n) and not n.is_integer() for v in raw))
    labels = None
    if not regression:
        _no_missing(raw, train_where, column, nan=True)
        labels = tuple(sorted({_label_text(v) for v in raw}, key=_label_order))
        if len(labels) < 2:
            raise UserError(f"{train_where}: every row has the label '{labels[0]}' in column '{column}'; "
                            f"classification needs at least 2 labels: check --label-column, or pass "
                            f"--problem-type regression for scores")
    main, metrics = _metrics(run, regression, labels)
    task = TaskSpec(name, "", text_columns, labels, regression, main, metrics, "validation", source="data")

    def dataset(table, where, values):
        if values is not None:
            values = _scores(values, where, column) if regression else _class_indices(values, labels, where, column)
        return make_dataset(read_texts(table, text_columns, where), values, task)

    train = dataset(train_table, train_where, raw)
    if validation_table is not None:
        evaluation = dataset(validation_table, validation_where, _raw_labels(validation_table, column, validation_where))
        evaluation_set = f"{validation_where}, {len(evaluation)} rows"
    else:
        train, evaluation, evaluation_set = _hold_out(train, task, run.validation_ratio, train_where)
    test = None
    if test_table is not None:
        has_labels = column in test_table.column_names
        test = dataset(test_table, test_where, _raw_labels(test_table, column, test_where) if has_labels else None)
    register_own_data(task, train, evaluation)
    return TaskData(task, train, evaluation, evaluation_set, test, column)


def _hold_out(train: datasets.Dataset, task: TaskSpec, ratio: float, where: str):
    """(the rest of train, the held-out evaluation set, its description): stratified, the same rows every run."""
    n = len(train)
    n_held = math.floor(ratio * n + 0.5)
    if not 0 < n_held < n:
        raise UserError(f"{where} has {n} rows: too few to hold out {ratio:g} of them for evaluation; add rows, "
                        f"pass --validation-file, or change --validation-ratio")
    evaluation = heldout_sample(train, train.select([]), n_held, HELD_OUT_SEED, task)
    held = set(evaluation["idx"][:])
    rest = train.select([i for i in range(n) if i not in held])  # idx is the row's position
    description = (f"held out from {where}: {n_held} of its {n} rows ({ratio:g}, stratified by "
                   f"{'score' if task.is_regression else 'label'}, the same rows for every seed)")
    return rest, evaluation, description
