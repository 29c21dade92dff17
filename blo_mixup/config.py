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
class RunConfig:
    """Options shared by every method (the low-resource GLUE protocol, methods.md section 7)."""

    task: str | None = field(default=None, metadata={"help": "GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli"})
    data_dir: str | None = field(default=None, metadata={"help": "local GLUE folder (<dir>/RTE/train.tsv, dev.tsv); default: the hub"})
    model: str = field(default="minilm", metadata={"help": "model name or path; 'minilm' = the packaged all-MiniLM-L6-v2"})
    method: str = field(default="vanilla", metadata={"help": "fine-tuning method (see `blo-mixup methods`)"})
    train_size: int | None = field(default=300, metadata={"help": "training examples drawn per seed (stratified); 0 = the whole training set"})
    seed: int = field(default=1, metadata={"help": "seed of the subsample, the head's initialisation and the data order"})
    epochs: float = field(default=3.0, metadata={"help": "training epochs"})
    batch_size: int = field(default=16, metadata={"help": "batch size"})
    max_length: int = field(default=128, metadata={"help": "maximum tokens per example"})
    lr: float | None = field(default=None, metadata={"help": "learning rate; default by model size: 1e-4 under 100M parameters, 2e-5 above"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases or LayerNorms)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps of linear warmup"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 = off"})
    eval_batch_size: int = field(default=64, metadata={"help": "batch size on the dev set"})
    output_dir: str | None = field(default=None, metadata={"help": "run folder (results.json, model/); default runs/<task>-<method>-s<seed>"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier run in --output-dir"})
    resume: bool = field(default=False, metadata={"help": "continue the killed run in --output-dir from its last checkpoint (same options)"})
    save_steps: int = field(default=50, metadata={"help": "save a checkpoint every this many steps (blo-mixup phase 1: lower steps) and at the end of each stage; 0 = never"})
    skip_nonfinite: int = field(default=0, metadata={"help": "skip up to this many steps whose loss or gradient is NaN/Inf, then stop; 0 = stop at the first"})
    save_model: bool = field(default=True, metadata={"help": "save the fine-tuned model (save_pretrained) in <output-dir>/model"})
    device: str | None = field(default=None, metadata={"help": "torch device; default CUDA when present, else CPU"})
    strategy: str = field(default="default", metadata={"help": "default: one process; distributed: data parallel over the processes torchrun starts (docs/robustness.md)", "choices": ("default", "distributed")})


def small_model_lr(num_parameters: int) -> float:
    """Default learning rate by model size (design.md: 2e-5 leaves MiniLM below the majority rate)."""
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
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_known_keys(keys, known: list[str], where: str) -> None:
    """Reject keys that are not options, naming the closest valid one."""
    for key in keys:
        if key not in known:
            raise UserError(f"unknown option '{key}' in {where}{did_you_mean(key, known)}; see `blo-mixup finetune --help` for the valid names")


def build_dataclass(cls, values: dict[str, Any], where: str):
    """Instantiate an options dataclass from a dict, coercing simple types and naming bad values."""
    kwargs = {}
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in values.items():
        kwargs[name] = _coerce(name, value, str(types[name]), where)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"bad options in {where}: {e}") from e


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


def validate_run_config(run: RunConfig) -> None:
    """Range checks on the shared options; task/method names are checked where they are looked up."""
    if run.task is None:
        raise UserError("no task given; pass --task (e.g. --task rte) or set 'task' in the config file")
    check_positive("lr", run.lr)
    check_positive("epochs", run.epochs)
    check_positive("batch_size", run.batch_size)
    check_positive("eval_batch_size", run.eval_batch_size)
    check_positive("max_length", run.max_length)
    check_positive("train_size", run.train_size, allow_zero=True)
    check_positive("weight_decay", run.weight_decay, allow_zero=True)
    check_positive("max_grad_norm", run.max_grad_norm, allow_zero=True)
    check_positive("save_steps", run.save_steps, allow_zero=True)
    check_positive("skip_nonfinite", run.skip_nonfinite, allow_zero=True)
    if run.resume and run.overwrite:
        raise UserError("--resume continues the run in --output-dir and --overwrite starts it over; give one of them")
    if not 0 <= run.warmup_ratio < 1:
        raise UserError(f"--warmup-ratio must be in [0, 1); got {run.warmup_ratio}")


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)
