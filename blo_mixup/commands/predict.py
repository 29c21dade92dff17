"""`blo-mixup predict`: a fine-tuned model's predictions for the rows of a data file (predict.predict_file)."""

from __future__ import annotations

NAME = "predict"


def add_parser(sub) -> None:
    parser = sub.add_parser(NAME, help="predict the rows of a data file with a fine-tuned model")
    parser.add_argument("model", metavar="MODEL_OR_RUN_DIR", help="a run folder of `blo-mixup finetune`, or a model folder")
    parser.add_argument("--file", required=True, help="the rows to predict: a .csv, .tsv, .json, .jsonl or .parquet file (labels not needed)")
    parser.add_argument("--text-columns", help="the text column(s) of --file, like text or premise,hypothesis (default: the run's)")
    parser.add_argument("--output", required=True, help="where to write the rows with their predictions: .csv, .tsv or .jsonl")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch (default: 64)")
    parser.add_argument("--max-length", type=int, help="maximum tokens per row (default: the run's, else 128)")
    parser.add_argument("--device", help="torch device; default CUDA when present, else CPU")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run(args) -> int:
    from ..predict import predict_file

    count = predict_file(args.model, args.file, args.output, text_columns=args.text_columns, batch_size=args.batch_size,
                         max_length=args.max_length, device=args.device, overwrite=args.overwrite)
    print(f"wrote {count} rows with their predictions to {args.output}")
    return 0
