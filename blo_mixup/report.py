"""Tables and plots from result files: results.csv (one row per run), summary.md, summary.png."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from .runs import save_figure_atomic, write_text_atomic

CSV_FIELDS = ["task", "method", "seed", "train_size", "weight_updates", "main_metric", "main_score", "constant_score",
              "train_time_s", "total_time_s", "attention_mean", "attention_min", "attention_mean_low", "attention_mean_high"]
# Typed on reading; every other column of results.csv is a metric.
_INTEGERS, _TEXT = ("seed", "train_size", "weight_updates"), ("task", "method", "main_metric")


def attention_of(result: dict) -> dict[str, dict[str, float]]:
    """The learned attention's statistics per mixed weight matrix ({name: {mean, std, min, max}}) of a
    blo-mixup run's results.json; empty for a method without attention."""
    return (result.get("blo") or {}).get("attention") or {}


def result_row(result: dict) -> dict:
    """A run's results.json as one row of results.csv: CSV_FIELDS plus "metrics" ({name: value}).

    The attention columns summarise A over the mixed weight matrices (1 is W unmixed): attention_mean is
    the mean of the per-matrix means, attention_mean_low / _high the lowest and highest per-matrix mean,
    attention_min the smallest entry of A anywhere; empty for a method without attention."""
    row = {field: result.get(field) for field in CSV_FIELDS}
    stats = attention_of(result)
    if stats:
        means = [m["mean"] for m in stats.values()]
        row.update(attention_mean=statistics.fmean(means), attention_min=min(m["min"] for m in stats.values()),
                   attention_mean_low=min(means), attention_mean_high=max(means))
    return {**row, "metrics": dict(result.get("metrics") or {})}


def write_results_csv(rows: list[dict], path: Path) -> None:
    """results.csv: one line per run (result_row's), CSV_FIELDS then one column per metric; empty cells for
    values a run does not have."""
    metric_names = sorted({m for r in rows for m in r["metrics"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS + metric_names)
    for r in rows:
        writer.writerow([_cell(r.get(f)) for f in CSV_FIELDS] + [_cell(r["metrics"].get(m)) for m in metric_names])
    write_text_atomic(path, buffer.getvalue())


def _cell(value) -> str:
    return "" if value is None else str(value)


def read_results_csv(path: Path) -> list[dict]:
    """The rows of a results.csv (write_results_csv's), typed: numbers as numbers, empty cells as None."""
    with open(path, newline="") as f:
        rows = []
        for line in csv.DictReader(f):
            row = {}
            for key, text in line.items():
                row[key] = (None if text == "" else text if key in _TEXT else
                            int(text) if key in _INTEGERS else float(text))
            rows.append({**{f: row.pop(f, None) for f in CSV_FIELDS},
                         "metrics": {name: value for name, value in row.items() if value is not None}})
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_table(results: list[dict], tasks: list[str], methods: list[str], expected_seeds: list[int] | None = None,
                  reference: dict[str, float] | None = None) -> str:
    """Markdown: main score x100 as mean +- std over seeds per task and method, plus the average over tasks.

    The best mean per column is bold. The average column averages each seed's scores over the tasks
    first, so its std is the spread of the per-seed averages (only seeds present for every task).
    A cell with fewer runs than `expected_seeds` (a comparison still under way) says how many it has.
    `reference` (task -> score, as metrics.constant_prediction_score gives) adds the line a run must beat
    to have learned anything.
    """
    scores = {(r["task"], r["method"], r["seed"]): 100 * r["main_score"] for r in results}
    from .data import get_task

    metric_of = {t: get_task(t).main_metric for t in tasks}
    cells: dict[tuple[str, str], tuple[float, float, int]] = {}
    for method in methods:
        for task in tasks:
            values = [v for (t, m, _), v in scores.items() if t == task and m == method]
            if values:
                cells[task, method] = (*mean_std(values), len(values))
        seeds = {s for (t, m, s) in scores if m == method}
        per_seed = [statistics.fmean(scores[t, method, s] for t in tasks) for s in sorted(seeds)
                    if all((t, method, s) in scores for t in tasks)]
        if per_seed:
            cells["average", method] = (*mean_std(per_seed), len(per_seed))
    columns = tasks + ["average"]
    best = {c: max((cells[c, m][0] for m in methods if (c, m) in cells), default=math.nan) for c in columns}
    header = "| method | " + " | ".join(f"{t} ({metric_of.get(t, '')})" if t != "average" else "average" for t in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for method in methods:
        row = []
        for c in columns:
            if (c, method) not in cells:
                row.append("-")
                continue
            mean, std, n = cells[c, method]
            text = (f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}") + \
                (f" ({n} of {len(expected_seeds)} seeds)" if expected_seeds and n < len(expected_seeds) else "")
            row.append(f"**{text}**" if mean == best[c] else text)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    seeds_seen = sorted({s for (_, _, s) in scores})
    lines.append("")
    if len(seeds_seen) == 1:
        lines.append(f"Main metric x100 of ONE seed ({seeds_seen[0]}): no spread is known, and seed-to-seed differences of "
                     "several points are common at this size; run more seeds (--seeds 1-5) before reading a difference.")
    else:
        lines.append(f"Main metric x100, mean ± sample std over seeds {', '.join(map(str, seeds_seen))}; best mean per column in bold.")
    if reference:
        scores_text = ", ".join(f"{t} {100 * reference[t]:.2f}" for t in tasks if t in reference)
        lines.append(f"A constant prediction (the evaluation set's majority class; its mean score for regression) scores: {scores_text}.")
    return "\n".join(lines) + "\n"


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of paired differences (needs two or more values)."""
    from scipy import stats

    mean, std = mean_std(values)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * std / math.sqrt(len(values))
    return float(mean - half), float(mean + half)


def updates_table(results: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Markdown: each method's optimizer steps on the task weights per task (runs agree unless a method stops
    early: then the range), so a gain can be read against the budget that bought it."""
    lines = ["| weight updates | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for method in methods:
        row = []
        for task in tasks:
            counts = sorted({r["weight_updates"] for r in results
                             if r["task"] == task and r["method"] == method and r.get("weight_updates") is not None})
            row.append("-" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", "Optimizer steps on the task weights W per run (blo-mixup: phase-1 lower steps plus phase 2)."]
    return "\n".join(lines) + "\n"


def time_table(results: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Markdown: per method and task, the median training time over seeds (train_time_s) and its ratio to the
    first method's median on the same task; empty when no run records its time."""
    def median(method, task):
        times = [r["train_time_s"] for r in results if r["task"] == task and r["method"] == method and r.get("train_time_s")]
        return statistics.median(times) if times else None

    lines = ["| training time | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    timed = False
    for method in methods:
        row = []
        for task in tasks:
            seconds, base = median(method, task), median(methods[0], task)
            timed |= seconds is not None
            row.append("-" if seconds is None else f"{seconds:.0f} s" + (f" ({seconds / base:.2f}x)" if base else ""))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", f"Median training time per run over seeds (train_time_s: the method's training, without loading and "
              f"evaluation), and in brackets its ratio to {methods[0]}'s. Wall times of whatever machine ran the rows, "
              "possibly several runs at once: a rough figure; `blo-mixup bench` measures cost."]
    return "\n".join(lines) + "\n" if timed else ""


def failed_table(results: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Markdown: per method and task, how many runs failed (metrics.failed: at most the constant prediction's
    score on the same evaluation set); empty when no run records a constant score."""
    from .metrics import failed

    lines = ["| failed runs | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    counted = False
    for method in methods:
        row = []
        for task in tasks:
            runs = [r for r in results if r["task"] == task and r["method"] == method and r.get("constant_score") is not None]
            counted |= bool(runs)
            row.append(f"{sum(failed(r['main_score'], r['constant_score']) for r in runs)}/{len(runs)}" if runs else "-")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", "Failed: main score at most the constant prediction's on the same evaluation set (Mosbach et al. 2021)."]
    return "\n".join(lines) + "\n" if counted else ""


def attention_table(rows: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Markdown: how far the learned attention A moved from 1 (W unmixed), per task and method with attention:
    the range of the per-matrix means of A over every matrix and seed, and the smallest entry. Empty when
    no run has attention. rows: result_row's (results.csv's)."""
    lines = []
    for method in methods:
        cells = []
        for task in tasks:
            runs = [r for r in rows if r["task"] == task and r["method"] == method and r.get("attention_min") is not None]
            cells.append(f"{min(r['attention_mean_low'] for r in runs):.3f}-{max(r['attention_mean_high'] for r in runs):.3f} "
                         f"(min {min(r['attention_min'] for r in runs):.2f})" if runs else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    lines = ["| attention A | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1), *lines, "",
             "The learned attention at the end of the run: lowest-highest mean of A over a mixed weight matrix "
             "(across every matrix and seed), and in brackets its smallest entry. A = 1 keeps the task weights W, "
             "A = 0 the pretrained W0."]
    return "\n".join(lines) + "\n"


def paired_table(results: list[dict], tasks: list[str], methods: list[str]) -> str:
    """Markdown: each method against the first one on the same seeds (same training subset, same head init).

    A cell is the mean +- sample std of the per-seed differences x100, and on how many of the paired
    seeds the method scored higher; pairing removes the seed-to-seed spread that both methods share.
    The average column pairs the per-seed averages over tasks (seeds present for every task).
    """
    baseline = methods[0]
    scores = {(r["task"], r["method"], r["seed"]): 100 * r["main_score"] for r in results}

    def cell(differences: list[float]) -> str:
        if not differences:
            return "-"
        mean, std = mean_std(differences)
        wins = sum(d > 0 for d in differences)
        if len(differences) == 1:  # one seed: no spread and no interval are known, so none is printed
            return f"{mean:+.2f} ({wins}/1 higher)"
        low, high = mean_interval(differences)
        return f"{mean:+.2f} ± {std:.2f} ({wins}/{len(differences)} higher; 95% CI {low:+.2f} to {high:+.2f})"

    lines = [f"| against {baseline}, same seeds | " + " | ".join(tasks + ["average"]) + " |",
             "|" + "---|" * (len(tasks) + 2)]
    for method in methods[1:]:
        row = []
        for task in tasks:
            seeds = sorted(s for (t, m, s) in scores if t == task and m == method and (t, baseline, s) in scores)
            row.append(cell([scores[task, method, s] - scores[task, baseline, s] for s in seeds]))
        seeds = sorted({s for (_, m, s) in scores if m == method})
        both = [s for s in seeds if all((t, m, s) in scores for t in tasks for m in (method, baseline))]
        row.append(cell([statistics.fmean(scores[t, method, s] - scores[t, baseline, s] for t in tasks) for s in both]))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Difference to {baseline} x100 on the same seed, mean ± sample std over seeds; "
                 "(k/n higher): seeds on which the method scored above it; 95% CI: Student-t interval of the mean "
                 "difference (an interval that excludes 0 is a difference the seeds support).")
    return "\n".join(lines) + "\n"


def summary_plot(results: list[dict], tasks: list[str], methods: list[str], path: Path,
                 reference: dict[str, float] | None = None) -> None:
    """One panel per task: each method's score per seed (dots), mean +- std (line and bar), and the first
    method's mean as a dashed line across the panel, so "better than the baseline?" reads at a glance;
    the constant-prediction score of `reference` (if given) is a dotted red line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import get_task

    columns = min(2, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    width = max(4.0, 1.0 + 0.6 * len(methods))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for i, method in enumerate(methods):
            values = [100 * r["main_score"] for r in results if r["task"] == task and r["method"] == method]
            if not values:
                continue
            mean, std = mean_std(values)
            ax.errorbar(i, mean, yerr=std, fmt="_", markersize=18, color="#1f4e79", capsize=4, zorder=2)
            ax.scatter([i] * len(values), values, color="#7fa7cf", s=14, zorder=3)
            if i == 0:
                ax.axhline(mean, color="#888888", linestyle="--", linewidth=0.8, zorder=1)
        if reference and task in reference:
            ax.axhline(100 * reference[task], color="#c0392b", linestyle=":", linewidth=1.0, zorder=1,
                       label="constant prediction")
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.set_title(f"{task} ({get_task(task).main_metric})")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right")
        ax.set_xlim(-0.5, len(methods) - 0.5)
        ax.set_ylabel("dev score x100")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    if len({r["seed"] for r in results}) == 1:
        fig.suptitle("ONE seed: no spread known; differences of a few points are within seed-to-seed noise", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)


def attention_plot(stats: dict, path: Path) -> None:
    """Mean learned attention A per layer, one line per kind of mixed matrix (query, key, ..., output).

    `stats` maps module names to {"mean": ...} (WeightMixup.attention_stats()); modules outside the
    numbered layers (the pooler) are drawn as points at the right.
    """
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, dict[int, float]] = {}
    others: dict[str, float] = {}
    for name, values in stats.items():
        if not isinstance(values, dict) or "mean" not in values:
            continue
        match = re.search(r"(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$", name)
        if match:
            lines.setdefault(match.group(2), {})[int(match.group(1))] = values["mean"]
        else:
            others[name] = values["mean"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, by_layer in sorted(lines.items()):
        layers = sorted(by_layer)
        ax.plot(layers, [by_layer[i] for i in layers], marker="o", ms=3, label=kind)
    right = max((max(v) for v in lines.values()), default=-1) + 1
    for i, (name, value) in enumerate(sorted(others.items())):
        ax.scatter([right + i], [value], marker="s", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention A (1 = task weights, 0 = pretrained)")
    ax.set_title("learned mixup attention per layer")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
