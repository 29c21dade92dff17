"""Fine-tune on your own data from Python: blo_mixup.fit on a pandas DataFrame.

The data is a small made-up set of text pairs (a headline and a body) with four topics as labels; with
your own data, build the DataFrame from anything, or pass a file path instead (train="news.csv").

    .venv/bin/python examples/fit_own_data.py                        # the packaged MiniLM: 5 min on 2 busy cores
    .venv/bin/python examples/fit_own_data.py --method vanilla       # plain fine-tuning, several times faster
    .venv/bin/python examples/fit_own_data.py --model path/to/model --epochs 1 --rows 40

It prints the evaluation metrics and the learned mixup attention, and saves the model (a plain
transformers model with your labels) to fitted-model/ (or --save).
"""

from __future__ import annotations

import argparse

import pandas as pd

import blo_mixup

TOPICS = ["sports", "politics", "science", "art"]
WORDS = {"sports": "match team goal season", "politics": "vote election party law",
         "science": "study cells energy theory", "art": "painting museum gallery colour"}


def make_data(rows: int) -> pd.DataFrame:
    """rows examples, the four topics in turn."""
    return pd.DataFrame({
        "headline": [f"{TOPICS[i % 4]} news, item {i}" for i in range(rows)],
        "body": [f"a story about {WORDS[TOPICS[i % 4]]} number {i}" for i in range(rows)],
        "topic": [TOPICS[i % 4] for i in range(rows)],
    })


def main(argv=None) -> blo_mixup.FitResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="'minilm', a hub name or a model folder")
    parser.add_argument("--method", default="blo-mixup", help="blo-mixup (the default), vanilla, ...")
    parser.add_argument("--rows", type=int, default=80, help="examples in the made-up data")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--save", default="fitted-model", help="folder to save the model to")
    parser.add_argument("--output-dir", default=None, help="run folder; default: a temporary folder")
    args = parser.parse_args(argv)

    # --- the user code: a DataFrame in, a fine-tuned model out ----------------------------------------
    data = make_data(args.rows)
    result = blo_mixup.fit(args.model, data, method=args.method, output_dir=args.output_dir,
                           text_columns=["headline", "body"], label_column="topic",
                           epochs=args.epochs, batch_size=8, max_length=64, seed=1)
    print("evaluation set:", ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
    if result.attention is not None:  # per mixed weight: the mean of A (1 = task weights, 0 = pretrained)
        means = [stats["mean"] for stats in result.attention.values()]
        print(f"mixup attention over {len(means)} weights: mean A from {min(means):.3f} to {max(means):.3f}")
    result.model.save_pretrained(args.save)
    result.tokenizer.save_pretrained(args.save)
    print(f"labels {result.model.config.id2label}; model saved to {args.save}; run folder {result.output_dir}")
    # ---------------------------------------------------------------------------------------------------
    return result


if __name__ == "__main__":
    main()
