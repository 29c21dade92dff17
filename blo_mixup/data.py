"""Tasks: specs, loading (a GLUE task from the hub or a local GLUE folder; your own data through
datafiles.py), low-resource subsamples, D1/D2 splits, tokenization and batching.

Every task is a TaskSpec (text columns, label names or regression, metrics) and every loader gives
the same dataset shape, so the rest of the pipeline does not know where the data came from:
`datafiles.load_task_data(run)` is the one entry point.

Every loader returns the hub's (nyu-mll/glue) shape whatever the source: a training set and an
evaluation set (for GLUE the dev set, which the low-resource protocol uses as its test set), each with
the task's text columns, "label" (a ClassLabel index, or a float32 score for regression) and "idx"
(the row's position in its file or split, stable across runs).

SST-2 ships with the package (glue_data/SST-2, the full official train and dev splits, xz-compressed;
source and licence in glue_data/README.md): `--task sst2` without --data-dir reads that copy, so the
demo and the tests need no network. The other tasks come from the hub unless --data-dir is given.

A local folder uses the classic GLUE layout, `<data_dir>/RTE/train.tsv` and `dev.tsv`
(MNLI: `dev_matched.tsv`; a file may be xz-compressed as `train.tsv.xz`), read with quoting off (csv.QUOTE_NONE) as the files require: with
default quoting MRPC and STS-B fail to parse and RTE silently loses quote characters. Files are
checked as they are read; every problem is a UserError that names the file (and line) and the fix.
"""

from __future__ import annotations

import io
import lzma
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import pandas as pd

from blo_mixup.errors import UserError, unknown_choice


@dataclass(frozen=True)
class TaskSpec:
    """What the code needs to know about one task: a GLUE task (names as on the hub, nyu-mll/glue) or
    your own data (datafiles.py: folder and dev_split unused, source "data")."""

    name: str  # "rte"
    folder: str  # "RTE": the task's folder in the classic GLUE layout
    text_columns: tuple[str, ...]  # ("sentence1", "sentence2") or ("sentence",) ...
    label_names: tuple[str, ...] | None  # in class-index order; None for regression (stsb)
    is_regression: bool
    main_metric: str  # the one a run is judged by
    metrics: tuple[str, ...]  # every metric reported
    dev_split: str  # the hub split used as the dev (= test) set
    source: str = "glue"  # "glue", or "data" for a task made from your own data

    @property
    def num_labels(self) -> int:
        """Output size of the model's head: the class count, or 1 for regression."""
        return 1 if self.is_regression else len(self.label_names)


def _classification(name, folder, text_columns, label_names, main_metric="accuracy", metrics=("accuracy",),
                   dev_split="validation"):
    return TaskSpec(name, folder, text_columns, label_names, False, main_metric, metrics, dev_split)


TASKS: dict[str, TaskSpec] = {
    task.name: task
    for task in (
        _classification("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
                        "matthews_correlation", ("matthews_correlation",)),
        _classification("sst2", "SST-2", ("sentence",), ("negative", "positive")),
        _classification("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                        "f1", ("accuracy", "f1")),
        _classification("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"),
                        "f1", ("accuracy", "f1")),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), None, True, "spearmanr",
                 ("pearson", "spearmanr"), "validation"),
        _classification("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                        dev_split="validation_matched"),
        _classification("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment")),
        _classification("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
        _classification("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    )
}


@dataclass(frozen=True)
class _LocalLayout:
    """How a task's files look in the classic GLUE layout."""

    dev_file: str
    columns: dict[str, str]  # canonical text column -> column name in the file
    label_column: str
    label_values: tuple[str, ...] | None  # raw label strings in class-index order; None: a float score
    header: tuple[str, ...] | None = None  # column names of a file without a header row (CoLA)
    score_range: tuple[float, float] | None = None  # the valid scores of a regression task


_BINARY = ("0", "1")
_LOCAL_LAYOUTS: dict[str, _LocalLayout] = {
    "cola": _LocalLayout("dev.tsv", {"sentence": "sentence"}, "label", _BINARY,
                         header=("source", "label", "original mark", "sentence")),
    "sst2": _LocalLayout("dev.tsv", {"sentence": "sentence"}, "label", _BINARY),
    "mrpc": _LocalLayout("dev.tsv", {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality", _BINARY),
    "qqp": _LocalLayout("dev.tsv", {"question1": "question1", "question2": "question2"}, "is_duplicate",
                        _BINARY),
    "stsb": _LocalLayout("dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2"}, "score", None,
                        score_range=(0.0, 5.0)),
    "mnli": _LocalLayout("dev_matched.tsv", {"premise": "sentence1", "hypothesis": "sentence2"},
                         "gold_label", ("entailment", "neutral", "contradiction")),
    "qnli": _LocalLayout("dev.tsv", {"question": "question", "sentence": "sentence"}, "label",
                         ("entailment", "not_entailment")),
    "rte": _LocalLayout("dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2"}, "label",
                        ("entailment", "not_entailment")),
    "wnli": _LocalLayout("dev.tsv", {"sentence1": "sentence1", "sentence2": "sentence2"}, "label", _BINARY),
}

_ALIASES = {"sts-b": "stsb", "sst-2": "sst2"}

# The GLUE tasks that ship with the package, in the classic layout (files xz-compressed).
PACKAGED_GLUE_DIR = Path(__file__).resolve().parent / "glue_data"
PACKAGED_TASKS = ("sst2",)


# Tasks made from your own data in this process, by name: get_task and load_glue find them too.
_OWN_DATA: dict[str, tuple[TaskSpec, datasets.DatasetDict]] = {}


def get_task(name: str) -> TaskSpec:
    """The TaskSpec of a GLUE task by name, case-insensitive ("RTE", "sts-b" and "stsb" all work), or
    of your own data loaded earlier in this process (by its exact name)."""
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    if name in _OWN_DATA:
        return _OWN_DATA[name][0]
    raise unknown_choice("task", name, TASKS)


def is_glue_name(name: str) -> bool:
    key = str(name).strip().lower()
    return _ALIASES.get(key, key) in TASKS


def register_own_data(task: TaskSpec, train: datasets.Dataset, evaluation: datasets.Dataset) -> None:
    """Make a task of your own data known by name (reports and methods look tasks up by name)."""
    _OWN_DATA[task.name] = (task, datasets.DatasetDict(train=train, validation=evaluation))


@dataclass
class TaskData:
    """A task and its data, whatever the source: every training row, the evaluation set, maybe a test set."""

    task: TaskSpec
    train: datasets.Dataset  # every training row; a run draws its subsample from these
    evaluation: datasets.Dataset  # what a run is scored on (GLUE: the dev set)
    evaluation_set: str  # where the evaluation set came from, in words (results.json)
    test: datasets.Dataset | None = None  # scored and predicted after training (its labels may be missing)
    label_column: str = "label"  # the gold column's name in the source (for the predictions file)


# ----------------------------------------------------------------------------------------- loading


def load_glue(task: TaskSpec | str, data_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """The task's train and dev sets as {"train", "validation"}: text columns, "label", "idx".

    With `data_dir`, reads `<data_dir>/<folder>/train.tsv` and the dev file of the classic GLUE
    layout; without it, the copy that ships with the package (SST-2), else "nyu-mll/glue" from the hub
    (or the datasets cache).
    """
    task = get_task(task)
    if task.source != "glue":  # your own data, loaded earlier (datafiles.py): its training rows
        return _OWN_DATA[task.name][1]
    if data_dir is None and task.name in PACKAGED_TASKS:
        data_dir = PACKAGED_GLUE_DIR
    if data_dir is None:
        return _load_from_hub(task)
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(
            f"GLUE data folder '{root}' does not exist; pass --data-dir with a folder that holds "
            f"{task.folder}/train.tsv (the classic GLUE layout), or leave it out to download from the hub"
        )
    folder = root / task.folder
    if not folder.is_dir():
        raise UserError(
            f"task folder '{folder}' does not exist; put the {task.name} files at {folder}/train.tsv and "
            f"{folder}/{_LOCAL_LAYOUTS[task.name].dev_file}, or pass the --data-dir that holds {task.folder}/"
        )
    layout = _LOCAL_LAYOUTS[task.name]
    return datasets.DatasetDict(
        train=_read_split(folder / "train.tsv", task, layout),
        validation=_read_split(folder / layout.dev_file, task, layout),
    )


def _load_from_hub(task: TaskSpec) -> datasets.DatasetDict:
    try:
        hub = datasets.load_dataset("nyu-mll/glue", task.name)
    except ConnectionError as error:
        raise UserError(
            f"could not download GLUE task {task.name} from the hub ({error}); "
            f"pass --data-dir with a local GLUE folder"
        ) from None
    columns = [*task.text_columns, "label", "idx"]
    return datasets.DatasetDict(
        train=hub["train"].select_columns(columns),
        validation=hub[task.dev_split].select_columns(columns),
    )


def _features(task: TaskSpec) -> datasets.Features:
    """The hub's column types, so local and hub datasets look alike."""
    label = datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names))
    return datasets.Features(
        {**{column: datasets.Value("string") for column in task.text_columns},
         "label": label, "idx": datasets.Value("int32")}
    )


def _read_split(path: Path, task: TaskSpec, layout: _LocalLayout) -> datasets.Dataset:
    """Read one TSV file of the classic GLUE layout (or its .xz), checking its shape, columns and labels."""
    compressed = path.with_name(path.name + ".xz")
    if not path.is_file() and not compressed.is_file():
        raise UserError(
            f"GLUE file '{path}' is missing; put the {task.name} {path.stem} split there "
            f"(classic GLUE layout) or pass another --data-dir"
        )
    # utf-8-sig drops the byte-order mark that starts MRPC's header; plain UTF-8 files read the same.
    try:
        raw = path.read_bytes() if path.is_file() else lzma.decompress(compressed.read_bytes())
        text = raw.decode("utf-8-sig").replace("\r\n", "\n")
    except lzma.LZMAError as error:
        raise UserError(f"GLUE file '{compressed}' is not valid xz data ({error}); replace it with the "
                        f"uncompressed {path.name}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"GLUE file '{path}' is not UTF-8 text ({error}); save it as UTF-8") from None
    lines = text.split("\n")
    # Physical (1-based) line numbers of the non-blank lines, to name lines in error messages.
    line_numbers = [number for number, line in enumerate(lines, 1) if line]
    if not line_numbers:
        raise UserError(f"GLUE file '{path}' is empty; put the {task.name} {path.stem} split there")

    if layout.header is None:
        header = lines[line_numbers[0] - 1].split("\t")
        data_line_numbers = line_numbers[1:]
    else:
        header = list(layout.header)
        data_line_numbers = line_numbers
    needed = [*layout.columns.values(), layout.label_column]
    missing = [column for column in needed if column not in header]
    if missing:
        raise UserError(
            f"GLUE file '{path}' lacks the column(s) {', '.join(missing)} (found: {', '.join(header)}); "
            f"use the classic GLUE {task.folder} file with columns {', '.join(needed)}"
        )
    if not data_line_numbers:
        raise UserError(f"GLUE file '{path}' has no data rows; put the {task.name} {path.stem} split there")

    # pandas pads short rows with empty fields without a word, so count fields here; with quoting
    # off a tab always separates fields.
    bad = [n for n in data_line_numbers if lines[n - 1].count("\t") != len(header) - 1]
    if bad:
        first = lines[bad[0] - 1].count("\t") + 1
        raise UserError(
            f"GLUE file '{path}' has {len(bad)} malformed row(s): line {bad[0]} has {first} tab-separated "
            f"fields, expected {len(header)} ({', '.join(header)}); fix or delete "
            f"line(s) {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}"
        )

    # quoting=3 (csv.QUOTE_NONE): quote characters are text; keep_default_na=False: "NA" is text too.
    table = pd.read_csv(
        io.StringIO(text), sep="\t", quoting=3, lineterminator="\n", dtype=str, keep_default_na=False,
        header=0 if layout.header is None else None, names=layout.header,
    )
    assert len(table) == len(data_line_numbers), (path, len(table), len(data_line_numbers))

    columns = {canonical: table[column].tolist() for canonical, column in layout.columns.items()}
    columns["label"] = _parse_labels(table[layout.label_column].str.strip(), path, task, layout,
                                     data_line_numbers)
    columns["idx"] = list(range(len(table)))
    return datasets.Dataset.from_dict(columns, features=_features(task))


def _parse_labels(raw: pd.Series, path: Path, task: TaskSpec, layout: _LocalLayout,
                  line_numbers: list[int]) -> list:
    """Raw label strings -> class indices (or float scores), with the first bad value named."""
    if layout.label_values is None:
        scores = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise UserError(
                f"GLUE file '{path}' line {line_numbers[bad[0]]}: score '{raw.iloc[bad[0]]}' is not a "
                f"number ({bad.size} such row(s)); {task.name} needs a numeric {layout.label_column} "
                f"in every row"
            )
        low, high = layout.score_range or (-math.inf, math.inf)
        bad = np.flatnonzero((scores < low) | (scores > high))
        if bad.size:
            raise UserError(
                f"GLUE file '{path}' line {line_numbers[bad[0]]}: score '{raw.iloc[bad[0]]}' is outside "
                f"{task.name}'s range {low:g} to {high:g} ({bad.size} such row(s)); fix the "
                f"{layout.label_column} column or use the classic GLUE {task.folder} file"
            )
        return scores.tolist()
    index_of = {value: index for index, value in enumerate(layout.label_values)}
    labels = raw.map(index_of)
    bad = np.flatnonzero(labels.isna().to_numpy())
    if bad.size:
        raise UserError(
            f"GLUE file '{path}' line {line_numbers[bad[0]]}: label '{raw.iloc[bad[0]]}' is not one of "
            f"{', '.join(layout.label_values)} ({bad.size} such row(s)); fix the {layout.label_column} "
            f"column or use the classic GLUE {task.folder} file"
        )
    return labels.astype(int).tolist()


# ------------------------------------------------------------------------ subsamples and splits


def _column(ds: datasets.Dataset, name: str) -> np.ndarray:
    """One column as a numpy array; slicing first is fast where iterating a datasets Column is not."""
    return np.asarray(ds[name][:])


def _strata(ds: datasets.Dataset, task: TaskSpec, bins: int = 5) -> np.ndarray:
    """Stratum of each row: its class, or for regression its quantile bin of the score."""
    labels = _column(ds, "label")
    if not task.is_regression:
        return labels.astype(int)
    edges = np.quantile(labels, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, labels, side="right")


def _allocate(counts: np.ndarray, n: int, at_least_one: bool) -> np.ndarray:
    """Split n over strata of the given sizes in proportion, rounding by largest remainder.

    With at_least_one every stratum gets one row (the caller ensures n >= number of strata); the
    rows that costs come from the strata furthest above their exact share. Ties go to the lower
    stratum so the result is deterministic.
    """
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(int)
    if at_least_one:
        take = np.maximum(take, 1)
    surplus = n - take.sum()
    if surplus > 0:
        order = np.lexsort((np.arange(len(counts)), -(quota - take)))  # largest remainder first
        take[order[:surplus]] += 1
    while surplus < 0:  # only from at_least_one bumps
        over = np.where(take > 1, take - quota, -np.inf)
        take[np.argmax(over)] -= 1
        surplus += 1
    return take  # never above counts: n <= counts.sum() keeps every share within its stratum


def _stratified_pick(ds: datasets.Dataset, n: int, rng: np.random.Generator, task: TaskSpec,
                     at_least_one: bool) -> np.ndarray:
    """Row positions of a stratified random sample of n rows of ds, in ascending order."""
    strata = _strata(ds, task)
    # Visit rows in idx order so the sample depends on the rows, not on the order they come in.
    by_idx = np.argsort(_column(ds, "idx"), kind="stable")
    values, counts = np.unique(strata, return_counts=True)
    take = _allocate(counts, n, at_least_one)
    picked = [rng.permutation(by_idx[strata[by_idx] == value])[:k] for value, k in zip(values, take)]
    return np.sort(np.concatenate(picked))


def subsample(train: datasets.Dataset, n: int | None, seed: int, task: TaskSpec | str) -> datasets.Dataset:
    """A stratified random subsample of n training rows, the same for the same seed.

    Classification: classes keep their proportions (largest-remainder rounding), and every class
    gets at least one row. Regression (STS-B): the same over 5 quantile bins of the score, so the
    score distribution is kept. n None or equal to len(train): the whole train set.
    """
    task = get_task(task)
    if n is None or n == len(train):
        return train
    if n <= 0:
        raise UserError(f"train size {n} is not positive; pass a --train-size of at least 1")
    if n > len(train):
        raise UserError(
            f"train size {n} is larger than the {len(train)} training examples of {task.name}; "
            f"lower --train-size"
        )
    classes = 0 if task.is_regression else len(np.unique(_column(train, "label")))
    if n < classes:
        raise UserError(
            f"train size {n} is smaller than the {classes} classes of {task.name}; "
            f"raise --train-size to at least {classes}"
        )
    rows = _stratified_pick(train, n, np.random.default_rng(seed), task, at_least_one=not task.is_regression)
    return train.select(rows)


def heldout_sample(train: datasets.Dataset, subset: datasets.Dataset, n: int, seed: int,
                   task: TaskSpec | str) -> datasets.Dataset:
    """A stratified sample of n training rows that are not in `subset` (matched by "idx").

    Held-out training data to choose a protocol on (learning curves), so that the dev set, which the
    tables report, is never looked at while choosing. Seeded with (seed, 2): its own random stream.
    """
    task = get_task(task)
    taken = set(_column(subset, "idx").tolist())
    rest = [i for i, idx in enumerate(_column(train, "idx").tolist()) if idx not in taken]
    if n <= 0 or n > len(rest):
        raise UserError(f"held-out size {n} must be between 1 and the {len(rest)} training examples of "
                        f"{task.name} outside the subsample; lower --heldout-size or --train-size")
    remaining = train.select(rest)
    rows = _stratified_pick(remaining, n, np.random.default_rng((seed, 2)), task, at_least_one=False)
    return remaining.select(rows)


def split_sizes(n: int, ratio: float) -> int:
    """The size of D1 when n examples are split at ratio; a UserError when D1 or D2 would be empty.

    Both halves need one example (D1 trains the weights, D2 the attention); a class missing from
    D2 is allowed: its loss and the hypergradient are defined without it.
    """
    if not 0 < ratio < 1:
        raise UserError(f"split ratio {ratio} is not between 0 and 1; pass a ratio such as 0.8")
    n_first = math.floor(ratio * n + 0.5)
    if not 0 < n_first < n:
        minimum = max(1, int(0.5 / min(ratio, 1 - ratio)) - 2)
        while not 0 < math.floor(ratio * minimum + 0.5) < minimum:
            minimum += 1
        raise UserError(
            f"splitting {n} training examples at ratio {ratio} leaves {'D1' if n_first == 0 else 'D2'} empty; "
            f"raise --train-size to at least {minimum} for --split-ratio {ratio}, or set --split-ratio closer to 0.5"
        )
    return n_first


def split_two(subset: datasets.Dataset, ratio: float, seed: int,
              task: TaskSpec | str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split a training subsample into disjoint D1 (ratio of it) and D2 (the rest), stratified.

    The bi-level methods train the weights on D1 and the mixup attention on D2. The generator is
    seeded with (seed, 1) so that the split does not reuse the subsample's random stream.
    """
    task = get_task(task)
    n = len(subset)
    n_first = split_sizes(n, ratio)
    classes = 0 if task.is_regression else len(np.unique(_column(subset, "label")))
    first = _stratified_pick(subset, n_first, np.random.default_rng((seed, 1)), task,
                             at_least_one=n_first >= classes > 0)
    second = np.setdiff1d(np.arange(n), first)
    return subset.select(first), subset.select(second)


# ------------------------------------------------------------------------ tokenizing and batches


def tokenize(ds: datasets.Dataset, tokenizer, task: TaskSpec | str, max_length: int) -> datasets.Dataset:
    """Token ids of each row, truncated to max_length and not padded (the collator pads per batch).

    Adds input_ids, attention_mask (and token_type_ids where the tokenizer gives them), turns
    "label" into "labels" (float32 for regression), keeps "idx" and drops the raw text columns.
    Rows without a "label" column (data to predict) stay without labels.
    """
    task = get_task(task)

    def encode(batch):
        texts = [batch[column] for column in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    encoded = ds.map(encode, batched=True, remove_columns=list(task.text_columns),
                     desc=f"Tokenizing {task.name}")
    if "label" not in encoded.column_names:
        return encoded
    encoded = encoded.rename_column("label", "labels")
    if task.is_regression and encoded.features["labels"] != datasets.Value("float32"):
        encoded = encoded.cast_column("labels", datasets.Value("float32"))  # MSE loss wants float32
    return encoded


def collator(tokenizer) -> Callable[[list[dict]], dict]:
    """Pads a list of tokenized rows to the longest one: a dict of tensors, labels and idx included.

    The result is a plain dict (not a BatchEncoding): Betty moves dict batches to the device key by
    key but treats anything else as a tuple.
    """
    from transformers import DataCollatorWithPadding  # import here: transformers is slow to import

    pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    return lambda features: dict(pad(features))
