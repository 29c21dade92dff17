"""Training logs: TensorBoard event files with both levels' scalars, read back; the loss history in
results.json; plain progress lines when the output is a file."""

import json

import pytest

from blo_mixup.cli import main


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_blo_mixup_writes_both_levels_to_tensorboard(glue_dir, tiny_bert_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    assert main(["finetune", "--task", "rte", "--method", "blo-mixup", "--train-size", "40", "--epochs", "1",
                 "--batch-size", "8", "--max-length", "32", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir),
                 "--output-dir", str(out), "--no-save-model", "--report-to", "tensorboard"]) == 0
    scalars = _scalars(out / "logs")
    # D1 = 32 examples: 4 lower steps, 4 upper steps (unroll 1); phase 2: 5 steps
    assert [s for s, _ in scalars["phase1/weights/loss"]] == [1, 2, 3, 4]
    assert len(scalars["phase1/attention/loss"]) == 4 and len(scalars["phase1/attention/grad_norm"]) == 4
    assert all(v > 0 for _, v in scalars["phase1/attention/grad_norm"])
    assert len(scalars["phase1/weights/lr"]) == 4
    assert [s for s, _ in scalars["phase2/loss"]] == [1, 2, 3, 4, 5] and len(scalars["phase2/lr"]) == 5
    attention = [tag for tag in scalars if tag.startswith("attention/")]
    assert "attention/bert.encoder.layer.0.attention.self.query" in attention and len(attention) == 2 * 6 + 1
    assert all(0.0 <= v <= 1.0 for tag in attention for _, v in scalars[tag])
    assert set(scalars["eval/accuracy"][0]) and 0 <= scalars["eval/accuracy"][0][1] <= 1

    results = json.loads((out / "results.json").read_text())
    history = results["loss_history"]
    assert [s for s, _ in history["phase2/loss"]] == [1, 2, 3, 4, 5]
    assert history["phase1/weights/loss"] == [[s, pytest.approx(v, abs=1e-6)] for s, v in scalars["phase1/weights/loss"]]


@pytest.mark.slow
def test_report_to_none_writes_no_event_files_but_keeps_the_history(glue_dir, tiny_bert_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    assert main(["finetune", "--task", "rte", "--train-size", "40", "--epochs", "1", "--batch-size", "8",
                 "--max-length", "32", "--data-dir", str(glue_dir), "--model", str(tiny_bert_dir),
                 "--output-dir", str(out), "--no-save-model", "--report-to", "none"]) == 0
    assert not (out / "logs").exists()
    results = json.loads((out / "results.json").read_text())
    assert [s for s, _ in results["loss_history"]["train/loss"]] == [1, 2, 3, 4, 5]


def test_line_progress_prints_plain_lines(capsys):
    from blo_mixup.logs import LineProgress, stage_tag

    progress = LineProgress(total=20, initial=0, desc="phase 2 (A fixed)")
    for _ in range(20):
        progress.set_postfix(loss="0.5")
        progress.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("phase 2 (A fixed): 20/20 steps (") and "\r" not in "".join(lines)
    assert [stage_tag(d) for d in ("train", "phase 2 (A fixed)", "phase 1 (BLO), fold 2/5", "FTFT reference")] == \
        ["train", "phase2", "phase1", "ftft_reference"]
