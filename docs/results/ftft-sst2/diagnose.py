"""Why FTFT scores at the constant's level on SST-2 at 300 examples (docs/results/README.md, "FTFT").

For each seed: the FTFT run of the table's protocol (`blo-mixup finetune --method ftft`, 10 epochs), which
writes its data map (ftft_data_map.csv); then plain fine-tuning (blo_mixup.fit, 10 epochs) on
  selected:  the rows FTFT selected (its "ambiguous" third),
  random:    as many rows drawn at random from the same 300, with the same number of each label,
and every model is scored on 1000 SST-2 training rows outside the 300 (never the GLUE dev set).
If the selected rows alone train a model no better than a constant while random rows of the same size and
label mix do, the selection, not FTFT's training loop, is what fails at this size.

Run from the repository root:  python docs/results/ftft-sst2/diagnose.py --seeds 1-3
(writes runs/ and summary.csv beside this file; about 7 minutes a seed on 2 CPU cores). SST-2 is the copy
shipped with the package unless --data-dir names a GLUE folder (the committed summary.csv used
../shared/data/glue, the same rows). runs/ is not committed: the runs behind summary.csv are in git history,
`git checkout 84be7d6 -- docs/results/ftft-sst2/runs` restores them, and a FTFT run found there is not redone.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import blo_mixup
from blo_mixup.data import load_glue

HERE = Path(__file__).resolve().parent
NAMES = {0: "negative", 1: "positive"}  # SST-2's label order in blo_mixup's task table


def sst2_train(data_dir: str | None) -> pd.DataFrame:
    table = load_glue("sst2", data_dir)["train"].to_pandas().set_index("idx", drop=False)  # index = idx = row of train.tsv
    return table.assign(label=table["label"].map(NAMES))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1-3")
    parser.add_argument("--data-dir", help="a GLUE folder (classic layout); default: the SST-2 shipped with the package")
    args = parser.parse_args()
    a, b = args.seeds.split("-")
    train = sst2_train(args.data_dir)
    rows = []
    for seed in range(int(a), int(b) + 1):
        ftft_dir = HERE / "runs" / f"ftft-seed{seed}"
        if not (ftft_dir / "results.json").is_file():
            subprocess.run([sys.executable, "-m", "blo_mixup.cli", "finetune", "--task", "sst2", "--method", "ftft",
                            "--seed", str(seed), "--epochs", "10", *(["--data-dir", args.data_dir] if args.data_dir else []), "--no-save-model",
                            "--report-to", "none", "--overwrite", "--output-dir", str(ftft_dir)], check=True)
        data_map = pd.read_csv(ftft_dir / "ftft_data_map.csv")
        pool = set(data_map["idx"])
        rng = np.random.default_rng(seed)
        outside = train.drop(index=list(pool))
        held_out = outside.iloc[rng.choice(len(outside), 1000, replace=False)]
        selected = train.loc[data_map.loc[data_map["selected"] == 1, "idx"]]
        # random rows of the pool with the selected rows' label counts
        pool_rows = train.loc[sorted(pool)]
        random = pd.concat([pool_rows[pool_rows["label"] == label].sample(n, random_state=seed)
                            for label, n in selected["label"].value_counts().items()])
        constant = held_out["label"].value_counts(normalize=True).max()
        for name, rows_used in (("selected", selected), ("random", random)):
            result = blo_mixup.fit("minilm", rows_used[["sentence", "label"]], held_out[["sentence", "label"]],
                                   method="vanilla", text_columns="sentence", epochs=10, seed=seed,
                                   save_model=False, report_to="none", overwrite=True, output_dir=HERE / "runs" / f"{name}-seed{seed}")
            rows.append({"seed": seed, "train_rows": name, "n": len(rows_used),
                         "negative": int((rows_used["label"] == "negative").sum()),
                         "accuracy": result.metrics["accuracy"], "constant": constant})
            print(rows[-1], flush=True)
    summary = pd.DataFrame(rows)
    summary.to_csv(HERE / "summary.csv", index=False)
    print(summary.groupby("train_rows")["accuracy"].agg(["mean", "std", "count"]))


if __name__ == "__main__":
    main()
