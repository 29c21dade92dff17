"""The resolved configuration of one run: shared options, plus the chosen method's own options.

A config file (JSON, or YAML when PyYAML is installed) holds the same keys as the command-line flags,
with underscores: shared keys (`task`, `lr`, ...) and the chosen method's keys (`hypergradient`, ...).
Command-line flags override the file. Unknown keys are rejected with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean


@dataclass
class DataOptions:
    """Where a run's data comes from: a GLUE task, or your own data (docs/data.md). Also bench's options."""

    task: str | None = field(default=None, metadata={"help": "GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli (or your own data: --train-file, --dataset)"})
    data_dir: str | None = field(default=None, metadata={"help": "local GLUE folder (<dir>/RTE/train.tsv, dev.tsv); default: the SST-2 shipped with the package, the hub for other tasks"})
    train_file: str | None = field(default=None, metadata={"help": "your training data: a .csv, .tsv, .json, .jsonl or .parquet file (docs/data.md)"})
    validation_file: str | None = field(default=None, metadata={"help": "your evaluation data, same columns; default: a stratified --validation-ratio of the training rows, held out"})
    test_file: str | None = field(default=None, metadata={"help": "more data scored and predicted after training (test_metrics, test_predictions.csv); its label column may be missing"})
    dataset: str | None = field(default=None, metadata={"help": "a Hugging Face hub dataset (its train and validation splits) instead of --train-file; needs the network"})
    dataset_config: str | None = field(default=None, metadata={"help": "the configuration of the --dataset"})
    text_columns: str | None = field(default=None, metadata={"help": "your data's text column, or two for text pairs: text or premise,hypothesis; may be left out when the file has one column besides the label, or a known pair"})
    label_column: str = field(default="label", metadata={"help": "your data's column of labels (or scores, for regression)"})
    problem_type: str | None = field(default=None, metadata={"help": "default: regression when the labels hold a non-integer number, else classification", "choices": ("classification", "regression")})
    metric: str | None = field(default=None, metadata={"help": "main metric of your data: accuracy (default), macro_f1, f1 (two labels), matthews_correlation; regression: spearmanr (default), pearson"})
    validation_ratio: float = field(default=0.2, metadata={"help": "fraction of the training rows held out as the evaluation set when there is no --validation-file", "above": 0, "below": 1})


@dataclass
class RunConfig(DataOptions):
    """Options shared by every method (the low-resource GLUE protocol, docs/getting-started.md), the data first."""

    model: str = field(default="minilm", metadata={"help": "model name or path; 'minilm' = the packaged all-MiniLM-L6-v2"})
    method: str = field(default="vanilla", metadata={"help": "fine-tuning method (see `blo-mixup methods`)"})
    train_size: int | None = field(default=None, metadata={"help": "training examples drawn per seed (stratified); 0 = all; default: 300 with --task (the low-resource protocol), every row with your own data", "min": 0})
    heldout_size: int | None = field(default=None, metadata={"help": "GLUE: score the run on this many training examples outside the seed's subsample (stratified; the rows `blo-mixup curves` scores) instead of the dev set, to choose options without looking at the dev set; default: the dev set", "min": 1})
    seed: int = field(default=1, metadata={"help": "seed of the subsample, the head's initialisation and the data order"})
    epochs: float | None = field(default=None, metadata={"help": "training epochs; default: the fewest that give 360 weight updates, at least 3 and at most 10 (at batch size 16: 10 up to 624 examples, 6 at 1000, 3 from 1905; docs/method.md)", "above": 0})
    batch_size: int = field(default=16, metadata={"help": "batch size", "above": 0})
    max_length: int = field(default=128, metadata={"help": "maximum tokens per example", "above": 0})
    lr: float | None = field(default=None, metadata={"help": "learning rate; default by model size: 1e-4 under 100M parameters, 2e-5 above", "above": 0})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases or LayerNorms)", "min": 0})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear warmup", "min": 0, "below": 1})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 = off", "min": 0})
    eval_batch_size: int = field(default=64, metadata={"help": "batch size on the dev set", "above": 0})
    output_dir: str | None = field(default=None, metadata={"help": "run folder (results.json, predictions.csv, model/); default runs/<task or data file>-<method>-s<seed>"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier run in --output-dir"})
    resume: bool = field(default=False, metadata={"help": "continue the killed run in --output-dir from its last checkpoint (same options)"})
    save_steps: int = field(default=50, metadata={"help": "save a checkpoint every this many steps (blo-mixup phase 1: lower steps) and at the end of each stage; 0 = never", "min": 0})
    skip_nonfinite: int = field(default=0, metadata={"help": "skip up to this many steps whose loss or gradient is NaN/Inf, then stop; 0 = stop at the first", "min": 0})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard: write both levels' losses, learning rates, the hypergradient norm, the mean attention per layer and the evaluation metrics to <output-dir>/logs; none: only the loss history in results.json", "choices": ("tensorboard", "none")})
    save_model: bool = field(default=True, metadata={"help": "save the fine-tuned model (save_pretrained) in <output-dir>/model"})
    device: str | None = field(default=None, metadata={"help": "torch device; default CUDA when present, else CPU"})
    strategy: str = field(default="default", metadata={"help": "default: one process; distributed: data parallel over the processes torchrun starts (docs/robustness.md)", "choices": ("default", "distributed")})


GLUE_TRAIN_SIZE = 300  # the low-resource protocol's default subsample
OWN_DATA_OPTIONS = ("validation_file", "test_file", "dataset_config", "text_columns", "problem_type", "metric")


def with_train_size(run: RunConfig) -> RunConfig:
    """The run with its default --train-size filled in: 300 for a GLUE task, 0 (every row) for your own data."""
    if run.train_size is not None:
        return run
    return dataclasses.replace(run, train_size=GLUE_TRAIN_SIZE if run.task is not None else 0)


# The default training length (docs/method.md, "Training length"): the held-out curves of plain fine-tuning
# (docs/results/curves-minilm) keep improving up to 10 epochs at 300 examples and level off by 6 at 1000.
DEFAULT_WEIGHT_UPDATES, DEFAULT_MIN_EPOCHS, DEFAULT_MAX_EPOCHS = 360, 3, 10


def default_epochs(num_examples: int, batch_size: int) -> int:
    """The epochs of a run that does not set --epochs: the fewest that give DEFAULT_WEIGHT_UPDATES steps
    at this size, within [DEFAULT_MIN_EPOCHS, DEFAULT_MAX_EPOCHS]; small data sets get more epochs."""
    per_epoch = max(1, math.ceil(num_examples / batch_size))
    return min(DEFAULT_MAX_EPOCHS, max(DEFAULT_MIN_EPOCHS, math.ceil(DEFAULT_WEIGHT_UPDATES / per_epoch)))


def epochs_of(run: "RunConfig", num_examples: int) -> float:
    """The epochs `run` trains on `num_examples` examples: --epochs, else the default for that size."""
    return run.epochs if run.epochs is not None else default_epochs(num_examples, run.batch_size)


def small_model_lr(num_parameters: int) -> float:
    """Default learning rate by model size (docs/method.md: 2e-5 leaves MiniLM below the majority rate)."""
    return 1e-4 if num_parameters < 100_000_000 else 2e-5


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a flat dict of option names (dashes become underscores)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; check the path given to --config")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as e:
                raise UserError(f"config file {path} is YAML but PyYAML is not installed; pip install pyyaml or use JSON") from e
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, Exception) as e:  # json.JSONDecodeError, yaml.YAMLError
        if isinstance(e, UserError):
            raise
        raise UserError(f"config file {path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} ({e}); fix its syntax") from e
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values; found {type(data).__name__}")
    return translate_names({str(k).replace("-", "_"): v for k, v in data.items()}, f"config file {path}")


# Hugging Face TrainingArguments (and run_glue.py) names -> this package's option names.
HF_NAMES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "overwrite_output_dir": "overwrite",
    "max_seq_length": "max_length",
    "model_name_or_path": "model",
}


# Options renamed so that the code, the flags and the docs name the two levels alike (lower and upper):
# old name -> name now. The old names stay accepted everywhere a name is given (flags, config files,
# fit() keywords, compare's variants) and in recorded runs (--resume, compare's check of a run folder).
RENAMED = {"outer_lr": "upper_lr", "inner_clip": "lower_clip"}


def translate_names(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept TrainingArguments names (learning_rate, num_train_epochs, ...) and the old names of renamed
    options (outer_lr) as this package's options. warmup_ratio, weight_decay, seed, output_dir,
    max_grad_norm and report_to are the same names here."""
    translated = {}
    for key, value in values.items():
        ours = HF_NAMES.get(key) or RENAMED.get(key) or key
        if ours != key and ours in values:
            whose = "Hugging Face's name" if key in HF_NAMES else "its old name"
            raise UserError(f"{where} sets both '{key}' ({whose}) and '{ours}' (the same option); keep one")
        translated[ours] = value
    return translated


def check_known_keys(keys, known: list[str], where: str, hint: str | None = None) -> None:
    """Reject keys that are not options, naming the closest valid one."""
    hint = hint or "see `blo-mixup finetune --help` for the valid names"
    for key in keys:
        if key not in known:
            raise UserError(f"unknown option '{key}' in {where}{did_you_mean(key, known)}; {hint}")


def build_dataclass(cls, values: dict[str, Any], where: str):
    """Instantiate an options dataclass from a dict, coercing simple types and naming bad values: the one
    place where flags, config files and fit()'s keywords become options, so their ranges are checked here."""
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        kwargs[name] = _coerce(name, value, str(fields[name].type), where)
    try:
        options = cls(**kwargs)
    except TypeError as e:
        raise UserError(f"bad options in {where}: {e}") from e
    check_option_values(options)
    return options


# The allowed values of an option, declared in its field's metadata next to its help:
#   "min" / "max": inclusive bounds; "above" / "below": exclusive bounds; "choices": the allowed values.
# check_option_values enforces them; None (an optional left unset) always passes.
RANGE_KEYS = ("min", "above", "max", "below")


def check_option_values(options) -> None:
    """Raise a UserError naming the flag of the first field of the dataclass `options` whose value is outside
    the range or choices its metadata declares, e.g. '--split-ratio must be strictly between 0 and 1; got 1.5'."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"{flag(f.name)} must be one of: {', '.join(map(str, choices))}; got {value!r}"
                            f"{did_you_mean(value, choices) if isinstance(value, str) else ''}")
        if any(key in f.metadata for key in RANGE_KEYS) and not in_range(value, f.metadata):
            raise UserError(f"{flag(f.name)} must be {range_words(f.metadata)}; got {value}")


def in_range(value, metadata) -> bool:
    if value != value:  # NaN is in no range
        return False
    return not (value < metadata.get("min", value) or value > metadata.get("max", value)
                or ("above" in metadata and value <= metadata["above"])
                or ("below" in metadata and value >= metadata["below"]))


def range_words(metadata) -> str:
    """The range of a field's metadata in words: 'positive', 'zero or more', 'strictly between 0 and 1', 'in [0, 1)'."""
    low, low_open = (metadata["above"], True) if "above" in metadata else (metadata.get("min"), False)
    high, high_open = (metadata["below"], True) if "below" in metadata else (metadata.get("max"), False)
    if high is None:
        if low == 0:
            return "positive" if low_open else "zero or more"
        return f"greater than {low}" if low_open else f"at least {low}"
    if low is None:
        return f"less than {high}" if high_open else f"at most {high}"
    if low_open and high_open:
        return f"strictly between {low} and {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _coerce(name: str, value, type_name: str, where: str):
    if value is None:
        return None
    try:
        if type_name.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if type_name.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if type_name.startswith("float"):
            number = float(value)
            if math.isnan(number):
                raise ValueError
            return number
    except (TypeError, ValueError):
        raise UserError(f"option '{name}' in {where} must be of type {type_name.split(' ')[0]}; got {value!r}") from None
    return value


def check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    """Raise a UserError naming the flag when a numeric option is out of range."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        raise UserError(f"--{name.replace('_', '-')} must be {bound}; got {value}")


def validate_run_config(run: RunConfig, data_given: bool = False) -> None:
    """Checks on the shared options; task/method names are checked where they are looked up.
    data_given: the data comes with the call (blo_mixup.fit), not from --task, --train-file or --dataset."""
    check_option_values(run)  # again, for a RunConfig built in Python
    check_data_options(run, data_given)
    if run.resume and run.overwrite:
        raise UserError("--resume continues the run in --output-dir and --overwrite starts it over; give one of them")


def check_data_options(run, data_given: bool = False) -> None:
    """One source of data, and your own data's options only with your own data. data_given: the data
    comes with the call (blo_mixup.fit's train=), so none of --task, --train-file, --dataset is needed."""
    sources = [flag for flag, value in (("--task", run.task), ("--train-file", run.train_file), ("--dataset", run.dataset))
               if value is not None]
    if not sources and not data_given:
        raise UserError("no data given; pass --task (e.g. --task rte), or your own data with --train-file "
                        "(docs/data.md), or set 'task' or 'train_file' in the config file")
    if len(sources) > 1:
        raise UserError(f"{' and '.join(sources)} are two sources of data; give one of them")
    if run.task is not None:
        own = [name for name in OWN_DATA_OPTIONS if getattr(run, name) is not None]
        own += ["label_column"] if run.label_column != "label" else []
        if own:
            raise UserError(f"--{own[0].replace('_', '-')} describes your own data, not a GLUE --task; drop it, "
                            f"or replace --task with --train-file")
    else:
        if run.data_dir is not None:
            raise UserError("--data-dir is the GLUE folder of --task; drop it (your own data is named by --train-file)")
        if getattr(run, "heldout_size", None) is not None:
            raise UserError("--heldout-size holds out GLUE training examples; your own data's evaluation set is "
                            "--validation-file or the --validation-ratio held out from it: drop --heldout-size")
    if run.dataset_config is not None and run.dataset is None:
        raise UserError("--dataset-config needs --dataset; drop it or name the hub dataset")


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def comma_list(text: str, kind: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; an empty list is a UserError naming --kind."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{kind} is empty; give a comma-separated list")
    return items


def seed_list(text: str) -> list[int]:
    """'1,2,3' or a range '1-5' (or a mix: '1-3,7')."""
    seeds = []
    try:
        for item in comma_list(text, "seeds"):
            first, _, last = item.partition("-")
            seeds.extend(range(int(first), int(last) + 1) if last else [int(first)])
    except ValueError:
        raise UserError(f"--seeds must be integers or ranges like 1,2,3 or 1-5; got '{text}'") from None
    if not seeds:
        raise UserError(f"--seeds '{text}' names no seed; a range goes up, like 1-5")
    return list(dict.fromkeys(seeds))


def shard_of(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the 2nd of 4 parts of a plan (items 2, 6, 10, ...), for processes side by side."""
    try:
        shard, shards = (int(x) for x in text.split("/"))
        if not 1 <= shard <= shards:
            raise ValueError
    except ValueError:
        raise UserError(f"--shard must be K/N with 1 <= K <= N, like 1/2; got '{text}'") from None
    return shard, shards
