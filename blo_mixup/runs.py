"""Run folders: refusing to clobber finished runs, and atomic writes so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError

RESULTS = "results.json"
MODEL_DIR = "model"
LOGS = "logs"  # TensorBoard event files (--report-to tensorboard)
CHECKPOINTS = "checkpoints"  # a killed run's saved stages (checkpoint.py)


def is_finished(output_dir: str | Path) -> bool:
    return (Path(output_dir) / RESULTS).is_file()


def prepare_output_dir(output_dir: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Create the run folder. A finished run in it is only replaced with --overwrite; the checkpoints
    of a killed run are only continued with --resume or discarded with --overwrite.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output-dir {output_dir} is a file; choose a folder path")
    if is_finished(output_dir) and not overwrite:
        raise UserError(f"{output_dir} already holds a finished run ({RESULTS}); pass --overwrite to replace it or choose another --output-dir")
    if has_checkpoints(output_dir) and not (resume or overwrite):
        raise UserError(f"{output_dir} holds the checkpoints of an unfinished run; pass --resume to continue it, "
                        "or --overwrite to start over")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def has_checkpoints(output_dir: str | Path) -> bool:
    return any((Path(output_dir) / CHECKPOINTS).glob("stage*.pt"))


def temporary_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to `path` (same file system, so os.replace is atomic), with the usual
    permissions (mkstemp makes it owner-only)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure_atomic(figure, path: str | Path, dpi: int) -> None:
    """A matplotlib figure as PNG through a temporary file of this process's own and a rename, so that
    processes rewriting one plot at once (compare --shard, --workers) never see or move each other's file."""
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            figure.savefig(f, dpi=dpi, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained_atomic(model, tokenizer, target: str | Path) -> None:
    """save_pretrained into a temporary sibling folder, then swap it in place of `target`."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_results(output_dir: str | Path) -> dict:
    path = Path(output_dir) / RESULTS
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; point to a finished run folder (one with {RESULTS})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run that run with --overwrite") from None


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
