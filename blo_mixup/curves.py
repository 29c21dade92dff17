"""`blo-mixup curves`: learning curves of plain fine-tuning on held-out training data, to choose a protocol.

A comparison of methods is only worth running where plain fine-tuning clearly beats a constant
prediction. Whether it does, and after how many updates, at which learning rate and with which head, is
measured here on held-out TRAINING examples (a stratified sample of the GLUE train split outside the
run's subsample), never on the dev set that the tables report.

One run = (task, train size, head, lr, warmup, epochs, seed): plain fine-tuning with the shared loop's
optimizer (AdamW, linear warmup and decay over all `epochs`), evaluated on the held-out sample after
every epoch. Each finished run is one JSON file under OUTPUT_DIR/runs/ or its rows in OUTPUT_DIR/curves.csv
(a committed grid keeps only that file), never redone, so the grid resumes where it stopped; curves.csv,
curves.md and curves.png are written from every finished run.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

HEADS = ("cls", "mean")


@dataclass(frozen=True)
class CurveRun:
    """One point of the grid: everything that decides a learning curve."""

    task: str
    train_size: int
    head: str  # "cls": the model's own head, tanh(pooler([CLS])); "mean": mean of the token vectors
    lr: float
    warmup_ratio: float
    epochs: int
    seed: int
    heldout_size: int = 500
    model: str = "minilm"
    batch_size: int = 16
    max_length: int = 128

    @property
    def config_name(self) -> str:
        return f"{self.head}-lr{self.lr:g}-wu{self.warmup_ratio:g}-ep{self.epochs}"

    def path(self, root: Path) -> Path:
        return root / "runs" / self.task / f"n{self.train_size}" / self.config_name / f"seed{self.seed}.json"


def run_curve(spec: CurveRun, data_dir: str | None, device: str | None = None) -> dict:
    """Train as `spec` says and return the held-out metrics after every epoch (and the constant reference)."""
    from transformers import set_seed

    from .config import RunConfig
    from .data import get_task, heldout_sample, load_glue, subsample
    from .methods.vanilla import Vanilla
    from .metrics import compute_metrics, main_metric_value
    from .models import load_model_and_tokenizer, mean_pooling_head
    from .training import Optimization, RunContext, evaluate, steps_for, to_device, training_step

    task = get_task(spec.task)
    glue = load_glue(task, data_dir)
    train_raw = subsample(glue["train"], spec.train_size, spec.seed, task)
    heldout_raw = heldout_sample(glue["train"], train_raw, spec.heldout_size, spec.seed, task)
    set_seed(spec.seed)
    model, tokenizer = load_model_and_tokenizer(spec.model, task)
    if spec.head == "mean":
        model = mean_pooling_head(model)
    run = RunConfig(task=task.name, model=spec.model, train_size=spec.train_size, seed=spec.seed, epochs=spec.epochs,
                    batch_size=spec.batch_size, max_length=spec.max_length, lr=spec.lr, warmup_ratio=spec.warmup_ratio)
    ctx = RunContext.create(run, task, tokenizer, train_rows=train_raw, evaluation_rows=heldout_raw, device=device, lr=spec.lr)

    # The constant reference: the training subsample's majority class (its mean score for regression).
    labels = train_raw["label"]
    guess = statistics.fmean(labels) if task.is_regression else max(set(labels), key=labels.count)
    constant = main_metric_value(task, compute_metrics(task, [guess] * len(ctx.dev), ctx.dev["labels"]))

    method = Vanilla(run=run)
    steps_per_epoch = steps_for(len(ctx.train), run.batch_size, 1)
    total = steps_per_epoch * spec.epochs
    set_seed(spec.seed)
    opt = Optimization.build(model, method, ctx, lr=spec.lr, total_steps=total, max_grad_norm=run.max_grad_norm)
    model.to(ctx.device).train()
    loader = ctx.loader(ctx.train)
    points, step, started = [], 0, time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        losses = []
        for batch in loader:
            step += 1
            loss = training_step(model, method, ctx, to_device(batch, ctx.device), step, opt)
            if loss is not None:
                losses.append(loss)
        metrics = evaluate(model, ctx)
        points.append({"epoch": epoch, "step": step, "train_loss": statistics.fmean(losses) if losses else math.nan,
                       "heldout": metrics, "main_score": metrics[task.main_metric]})
    return {"spec": asdict(spec), "main_metric": task.main_metric, "constant_score": constant,
            "steps_per_epoch": steps_per_epoch, "train_time_s": round(time.perf_counter() - started, 1),
            "curve": points}


# ------------------------------------------------------------------------------------------- report


def read_curves(root: Path) -> list[dict]:
    """Every finished curve of a grid folder: its runs/ JSON files, and the curves of curves.csv that have
    none (a grid committed without its run files). The run file wins: it also holds every metric."""
    import json

    curves = {CurveRun(**c["spec"]): c for c in _curves_from_csv(root / "curves.csv")}
    for path in sorted((root / "runs").glob("*/*/*/seed*.json")):
        curve = json.loads(path.read_text())
        curves[CurveRun(**curve["spec"])] = curve
    return [curves[spec] for spec in sorted(curves, key=lambda spec: spec.path(root))]


def _curves_from_csv(path: Path) -> list[dict]:
    """curves.csv (curve_rows' table) back into curves: spec, main metric, constant, one point per epoch."""
    import csv
    from dataclasses import fields

    if not path.is_file():
        return []
    types = {f.name: {"int": int, "float": float}.get(f.type, str) for f in fields(CurveRun)}
    curves: dict[CurveRun, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            spec = {name: cast(row[name]) for name, cast in types.items()}
            curve = curves.setdefault(CurveRun(**spec), {"spec": spec, "main_metric": row["main_metric"],
                                                         "constant_score": float(row["constant_score"]), "curve": []})
            curve["curve"].append({"epoch": int(row["epoch"]), "step": int(row["step"]),
                                   "train_loss": float(row["train_loss"]), "main_score": float(row["heldout_score"])})
    return list(curves.values())


def _groups(curves: list[dict]) -> dict[tuple, list[dict]]:
    """(task, train_size, config name) -> that configuration's finished seeds."""
    groups: dict[tuple, list[dict]] = {}
    for c in curves:
        spec = CurveRun(**c["spec"])
        groups.setdefault((spec.task, spec.train_size, spec.config_name), []).append(c)
    return groups


def curve_rows(curves: list[dict]) -> list[dict]:
    """One row per (run, epoch): the flat table behind curves.csv."""
    rows = []
    for c in curves:
        for point in c["curve"]:
            rows.append({**c["spec"], "epoch": point["epoch"], "step": point["step"], "train_loss": point["train_loss"],
                         "main_metric": c["main_metric"], "heldout_score": point["main_score"],
                         "constant_score": c["constant_score"]})
    return rows


def margin_table(curves: list[dict]) -> str:
    """Markdown: per task, size and configuration, the held-out score at every epoch as mean over seeds,
    the best epoch's margin over the constant prediction in standard errors (paired per seed), and the
    runs as trained (their last epoch): spread over seeds and how many failed."""
    from .metrics import failed

    lines = ["| task | n | configuration | seeds | held-out score x100 by epoch (mean over seeds) | constant | "
             "best epoch: margin ± SE (margin / SE) | last epoch: mean ± std | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (task, size, name), runs in sorted(_groups(curves).items()):
        epochs = min(len(r["curve"]) for r in runs)
        means = [statistics.fmean(r["curve"][e]["main_score"] for r in runs) for e in range(epochs)]
        best = max(range(epochs), key=lambda e: means[e])
        margins = [r["curve"][best]["main_score"] - r["constant_score"] for r in runs]
        mean = statistics.fmean(margins)
        se = statistics.stdev(margins) / math.sqrt(len(margins)) if len(margins) > 1 else math.nan
        ratio = f"{mean / se:.1f}" if se and not math.isnan(se) else "-"
        constant = statistics.fmean(r["constant_score"] for r in runs)
        curve = " ".join(f"{100 * m:.1f}" for m in means)
        last = [r["curve"][-1]["main_score"] for r in runs]
        spread = f"{100 * statistics.stdev(last):.1f}" if len(last) > 1 else "-"
        failures = sum(failed(r["curve"][-1]["main_score"], r["constant_score"]) for r in runs)  # as trained
        lines.append(f"| {task} | {size} | {name} | {len(runs)} | {curve} | {100 * constant:.1f} | "
                     f"{best + 1}: {100 * mean:+.1f} ± {100 * se:.1f} ({ratio}) | "
                     f"{100 * statistics.fmean(last):.1f} ± {spread} | {failures}/{len(runs)} |")
    lines += ["", "Held-out: a stratified sample of the GLUE train split outside each seed's subsample (never the dev set). "
              "Margin: best epoch's score minus the constant prediction (the subsample's majority class; its mean for "
              "regression), per seed, mean ± standard error over seeds. The best epoch is picked on the same held-out "
              "scores, so its margin is optimistic; read the whole curve. Last epoch: the runs as trained, mean ± "
              "standard deviation over seeds. Failed: runs whose last-epoch score is at most the constant "
              "prediction's (Mosbach et al. 2021)."]
    return "\n".join(lines) + "\n"


def curves_plot(curves: list[dict], path: Path) -> None:
    """One panel per (task, train size): mean ± std over seeds of the held-out score per epoch, one line per
    configuration, and the constant prediction as a dotted red line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import save_figure_atomic

    groups = _groups(curves)
    panels = sorted({(t, n) for t, n, _ in groups})
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (task, size) in zip(axes.flat, panels):
        constants = []
        for (t, n, name), runs in sorted(groups.items()):
            if (t, n) != (task, size):
                continue
            epochs = min(len(r["curve"]) for r in runs)
            values = [[100 * r["curve"][e]["main_score"] for r in runs] for e in range(epochs)]
            means = [statistics.fmean(v) for v in values]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            x = list(range(1, epochs + 1))
            line, = ax.plot(x, means, marker="o", ms=3, label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(x, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.12)
            constants += [100 * r["constant_score"] for r in runs]
        ax.axhline(statistics.fmean(constants), color="#c0392b", linestyle=":", linewidth=1.0, label="constant prediction")
        ax.set_title(f"{task}, {size} examples")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"held-out {groups[next(k for k in groups if k[:2] == (task, size))][0]['main_metric']} x100")
        ax.legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def write_report(root: Path) -> str:
    import csv
    import io

    from .runs import write_text_atomic

    curves = read_curves(root)
    if not curves:
        raise UserError(f"no finished learning curve in {root / 'runs'} yet; run `blo-mixup curves` without --report-only first")
    rows = curve_rows(curves)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(root / "curves.csv", buffer.getvalue())
    table = margin_table(curves)
    write_text_atomic(root / "curves.md", table)
    curves_plot(curves, root / "curves.png")
    return table


# ---------------------------------------------------------------------------------------------- CLI


def _numbers(text: str, kind: str, cast):
    try:
        values = [cast(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--{kind} must be a comma-separated list of numbers; got '{text}'") from None
    if not values or any(v <= 0 for v in values if kind != "warmup-ratios") or any(not 0 <= v < 1 for v in values if kind == "warmup-ratios"):
        raise UserError(f"--{kind} '{text}' needs values that are positive (warmup ratios: in [0, 1))")
    return values


def run_curves(*, tasks: str, output_dir: str | Path, train_sizes: str = "300", seeds: str = "1-5", heads: str = "cls",
               lrs: str = "1e-4", warmup_ratios: str = "0.1", epochs: int = 10, heldout_size: int = 500,
               model: str = "minilm", data_dir: str | None = None, shard: str = "1/1", report_only: bool = False) -> None:
    """Run the grid's learning curves that are not finished (this shard's part of it), then write curves.csv,
    curves.md and curves.png from every finished one; the `curves` command's options as keywords."""
    from .config import comma_list, seed_list, shard_of
    from .data import get_task
    from .runs import write_json_atomic

    tasks = [get_task(t).name for t in comma_list(tasks, "tasks")]
    heads = comma_list(heads, "heads")
    for head in heads:
        if head not in HEADS:
            raise UserError(f"unknown head '{head}' in --heads; choose cls or mean")
    if epochs < 1 or heldout_size < 1:
        raise UserError("--epochs and --heldout-size must be at least 1")
    shard, shards = shard_of(shard)
    root = Path(output_dir)
    grid = [CurveRun(task, size, head, lr, warmup, epochs, seed, heldout_size, model)
            for size, head, lr, warmup, seed, task in itertools.product(
                _numbers(train_sizes, "train-sizes", int), heads, _numbers(lrs, "lrs", float),
                _numbers(warmup_ratios, "warmup-ratios", float), seed_list(seeds), tasks)]
    mine = grid[shard - 1::shards]
    if not report_only:
        done = {CurveRun(**c["spec"]) for c in read_curves(root)}
        for i, spec in enumerate(mine, 1):
            path = spec.path(root)
            label = f"[{i}/{len(mine)}] {spec.task} n{spec.train_size} {spec.config_name} seed {spec.seed}"
            if spec in done or path.is_file():
                print(f"{label}: done earlier", flush=True)
                continue
            print(f"{label}: running", flush=True)
            result = run_curve(spec, data_dir)
            write_json_atomic(path, result)
            scores = " ".join(f"{100 * p['main_score']:.1f}" for p in result["curve"])
            print(f"{label}: held-out {result['main_metric']} by epoch {scores} (constant {100 * result['constant_score']:.1f}); "
                  f"{result['train_time_s']:.0f} s", flush=True)
    print(write_report(root))
    print(f"wrote {root / 'curves.csv'}, {root / 'curves.md'}, {root / 'curves.png'}")
