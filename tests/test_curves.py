"""`blo-mixup curves`: held-out training data outside the subsample, per-epoch scores, resume, the report;
and the mean-pooling head it compares against the model's own."""

import csv
import json

import numpy as np
import pytest
import torch

from blo_mixup.cli import main
from blo_mixup.data import get_task, heldout_sample, load_glue, subsample


def test_heldout_sample_is_disjoint_stratified_and_seeded():
    task = get_task("sst2")
    train = load_glue(task)["train"]  # the full SST-2 training split, shipped with the package
    subset = subsample(train, 300, 1, task)
    heldout = heldout_sample(train, subset, 500, 1, task)
    assert len(heldout) == 500
    assert not set(subset["idx"]) & set(heldout["idx"])
    share = np.mean(heldout["label"])
    assert abs(share - np.mean(train["label"])) < 0.01  # stratified: the class balance of the split
    assert heldout["idx"] == heldout_sample(train, subset, 500, 1, task)["idx"]
    assert heldout["idx"] != heldout_sample(train, subset, 500, 2, task)["idx"]


def test_heldout_sample_refuses_more_than_is_left(glue_dir):
    from blo_mixup.errors import UserError

    task = get_task("rte")
    train = load_glue(task, glue_dir)["train"]
    with pytest.raises(UserError, match="held-out size 2400"):
        heldout_sample(train, subsample(train, 300, 1, task), 2400, 1, task)


def test_mean_pooling_head_is_the_masked_mean_through_the_classifier(tiny_bert_dir):
    from blo_mixup.models import load_model_and_tokenizer, mean_pooling_head

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(str(tiny_bert_dir), get_task("rte"))
    model.eval()
    head = mean_pooling_head(model)
    batch = tokenizer(["a short one", "a somewhat longer second sentence here"], padding=True, return_tensors="pt")
    out = head(**batch, labels=torch.tensor([0, 1]))
    hidden = model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"]
    expected = torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(2)]) @ model.classifier.weight.T + model.classifier.bias
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(expected, torch.tensor([0, 1])), atol=1e-6)
    # padding does not change a sentence's vector: the first sentence alone scores the same
    alone = tokenizer(["a short one"], return_tensors="pt")
    assert torch.allclose(head(**alone).logits[0], out.logits[0], atol=1e-5)


@pytest.mark.slow
def test_curves_run_resume_and_report(glue_dir, tiny_bert_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "curves"
    args = ["curves", "--tasks", "sst2,stsb", "--train-sizes", "32", "--seeds", "1,2", "--heads", "cls,mean",
            "--epochs", "2", "--heldout-size", "24", "--model", str(tiny_bert_dir), "--data-dir", str(glue_dir),
            "--output-dir", str(out)]
    assert main([*args, "--shard", "1/2"]) == 0
    first = sorted(p.relative_to(out) for p in out.glob("runs/*/*/*/seed*.json"))
    assert len(first) == 4  # half of 2 tasks x 2 heads x 2 seeds
    assert main([*args, "--shard", "2/2"]) == 0
    files = sorted(out.glob("runs/*/*/*/seed*.json"))
    assert len(files) == 8
    run = json.loads((out / "runs/sst2/n32/mean-lr0.0001-wu0.1-ep2/seed1.json").read_text())
    assert [p["epoch"] for p in run["curve"]] == [1, 2] and [p["step"] for p in run["curve"]] == [2, 4]
    assert run["main_metric"] == "accuracy" and 0 <= run["curve"][-1]["main_score"] <= 1
    assert 0.3 < run["constant_score"] < 0.7  # the subsample's majority class on a balanced held-out sample

    capsys.readouterr()
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert main(args) == 0  # everything finished: nothing is redone
    assert capsys.readouterr().out.count("done earlier") == 8
    assert [p.stat().st_mtime_ns for p in files] == mtimes

    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == 16 and {r["head"] for r in rows} == {"cls", "mean"}
    table = (out / "curves.md").read_text()
    assert "| stsb | 32 | cls-lr0.0001-wu0.1-ep2 | 2 |" in table
    assert (out / "curves.png").stat().st_size > 0

    # A grid committed without its run files: curves.csv alone reports the same and counts as finished.
    import shutil

    written = (out / "curves.csv").read_text()
    shutil.rmtree(out / "runs")
    assert main([*args, "--report-only"]) == 0
    assert (out / "curves.md").read_text() == table and (out / "curves.csv").read_text() == written
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("done earlier") == 8 and not (out / "runs").exists()


def test_curves_rejects_bad_options(tmp_path, capsys):
    assert main(["curves", "--tasks", "sst2", "--heads", "max", "--output-dir", str(tmp_path)]) == 2
    assert "unknown head 'max'" in capsys.readouterr().err
    assert main(["curves", "--tasks", "sst2", "--shard", "3/2", "--output-dir", str(tmp_path)]) == 2
    assert "--shard must be K/N" in capsys.readouterr().err
    assert main(["curves", "--tasks", "sst2", "--lrs", "0", "--output-dir", str(tmp_path)]) == 2
    assert main(["curves", "--tasks", "sst2", "--report-only", "--output-dir", str(tmp_path)]) == 2
    assert "no finished learning curve" in capsys.readouterr().err


def test_the_table_counts_failed_runs_and_the_spread_of_the_runs_as_trained():
    from blo_mixup.curves import margin_table

    def curve(seed, scores, constant=0.5):
        spec = dict(task="sst2", train_size=300, head="cls", lr=1e-4, warmup_ratio=0.0, epochs=len(scores), seed=seed)
        return {"spec": spec, "main_metric": "accuracy", "constant_score": constant,
                "curve": [{"epoch": e + 1, "step": e + 1, "train_loss": 0.0, "main_score": s} for e, s in enumerate(scores)]}

    # seed 2 peaks at epoch 1 and ends at the constant (failed); seed 3 ends below it (failed)
    table = margin_table([curve(1, [0.6, 0.8]), curve(2, [0.7, 0.5]), curve(3, [0.5, 0.4]), curve(4, [0.6, 0.9])])
    row = next(line for line in table.splitlines() if line.startswith("| sst2 |"))
    assert row.endswith("| 65.0 ± 23.8 | 2/4 |")  # last epoch: 0.8, 0.5, 0.4, 0.9
    assert "Failed: runs whose last-epoch score is at most the constant" in table
