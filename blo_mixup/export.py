"""`blo-mixup export`: a run's model as an ordinary transformers model (mixup merged, no blo_mixup needed)."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .runs import MODEL_DIR, save_pretrained_atomic


def export_run(run_dir: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = Path(run_dir) / MODEL_DIR
    if not (source / "config.json").is_file():
        raise UserError(f"{run_dir} holds no saved model ({source}/config.json missing); pass a finished run folder of `blo-mixup finetune`")
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UserError(f"{output} already exists and is not empty; pass --overwrite or choose another folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    save_pretrained_atomic(model, tokenizer, output)
    return output
