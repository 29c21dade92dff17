"""The paper's trend: plain fine-tuning against blo-mixup as the training set grows (docs/results/README.md).

Reads the results.csv of one comparison folder per training size (300 is the table's own), pairs the two
methods on the same seeds, and writes trend/summary.md and trend/trend.png (or into --output-dir). Trains
nothing and reads no data: the constant prediction's score is results.csv's constant_score column.

    python docs/results/trend.py --seeds 1-5
"""

import argparse
from pathlib import Path

from blo_mixup.report import mean_interval, mean_std, read_results_csv

HERE = Path(__file__).resolve().parent
FOLDERS = {300: HERE / "table-300", 500: HERE / "trend-500", 1000: HERE / "trend-1000"}
TASKS = {"sst2": "SST-2 (accuracy)", "stsb": "STS-B (Spearman)"}
METHODS = ("vanilla", "blo-mixup")


def read_runs(seeds: set[int]) -> tuple[dict[tuple[str, str, int, int], float], dict[tuple[str, int], list], dict, dict]:
    """(task, method, size, seed) -> main score x100; (task, size) -> blo-mixup's rows (their attention
    columns); (task, method, size) -> training times (s); task -> the constant prediction's score x100."""
    scores, attention, times, constant = {}, {}, {}, {}
    for size, folder in FOLDERS.items():
        for row in read_results_csv(folder / "results.csv"):
            task, method, seed = row["task"], row["method"], row["seed"]
            if task not in TASKS or method not in METHODS or seed not in seeds:
                continue
            assert row["train_size"] == size, (folder, row)
            scores[task, method, size, seed] = 100 * row["main_score"]
            times.setdefault((task, method, size), []).append(row["train_time_s"])
            constant.setdefault(task, set()).add(100 * row["constant_score"])
            if row["attention_min"] is not None:
                attention.setdefault((task, size), []).append(row)
    assert all(len(values) == 1 for values in constant.values()), constant  # one dev set per task
    return scores, attention, times, {task: values.pop() for task, values in constant.items()}


def attention_line(task: str, attention) -> str:
    """How far the learned attention moved, per size: the range of the per-matrix mean of A over blo-mixup's
    runs and matrices, and the range over its runs of a run's smallest entry of A (A = 1 everywhere is plain W)."""
    parts = []
    for size in FOLDERS:
        runs = attention.get((task, size), [])
        if runs:
            mins = [r["attention_min"] for r in runs]
            parts.append(f"{size}: mean A per matrix {min(r['attention_mean_low'] for r in runs):.3f}-"
                         f"{max(r['attention_mean_high'] for r in runs):.3f}, smallest entry per run {min(mins):.2f}-{max(mins):.2f}")
    return "blo-mixup's learned attention (over its runs and mixed matrices) - " + "; ".join(parts) + "."


def time_line(task: str, times) -> str:
    """blo-mixup's training time against plain fine-tuning's, per size (mean over seeds). The runs shared
    the CPU with a second process, so this is rough; `blo-mixup bench` measures cost properly."""
    parts = [f"{size}: {mean_std(times[task, 'blo-mixup', size])[0] / mean_std(times[task, 'vanilla', size])[0]:.1f}x"
             for size in FOLDERS if (task, "blo-mixup", size) in times and (task, "vanilla", size) in times]
    return "blo-mixup's training time / plain fine-tuning's (mean over seeds; two processes shared the CPU) - " + ", ".join(parts) + "."


def cell(values: list[float], wanted: int) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    text = f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"
    return text + (f" ({len(values)} of {wanted} seeds)" if len(values) < wanted else "")


def difference(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    higher = sum(d > 0 for d in values)
    if len(values) == 1:
        return f"{mean:+.2f} (one seed)"
    low, high = mean_interval(values)
    return f"{mean:+.2f} ± {std:.2f} ({higher}/{len(values)} higher; 95% CI {low:+.2f} to {high:+.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1-5")
    parser.add_argument("--output-dir", type=Path, default=HERE / "trend", help="where summary.md and trend.png go")
    args = parser.parse_args(argv)
    first, last = args.seeds.split("-")
    seeds = set(range(int(first), int(last) + 1))
    scores, attention, times, constant = read_runs(seeds)
    lines = []
    for task, title in TASKS.items():
        lines += [f"**{title}**, dev x100, mean ± std over seeds {first}-{last}; blo-mixup - vanilla on the same seeds; "
                  f"a constant prediction scores {constant[task]:.2f}:", "",
                  "| training examples | vanilla | blo-mixup | blo-mixup - vanilla |", "|---|---|---|---|"]
        for size in FOLDERS:
            runs = {m: {s: v for (t, mm, n, s), v in scores.items() if (t, mm, n) == (task, m, size)} for m in METHODS}
            paired = [runs["blo-mixup"][s] - runs["vanilla"][s] for s in sorted(runs["vanilla"]) if s in runs["blo-mixup"]]
            lines.append(f"| {size} | {cell(list(runs['vanilla'].values()), len(seeds))} | "
                         f"{cell(list(runs['blo-mixup'].values()), len(seeds))} | {difference(paired)} |")
        lines += ["", attention_line(task, attention), "", time_line(task, times), ""]
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines))
    complete = len(scores) == len(TASKS) * len(METHODS) * len(FOLDERS) * len(seeds)
    plot(scores, constant, out / "trend.png", f"seeds {first}-{last}" + ("" if complete else "; a size with fewer seeds is still running"))
    print("\n".join(lines))


def plot(scores, constant: dict[str, float], path: Path, seeds_text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(FOLDERS)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.8), squeeze=False)
    for ax, (task, title) in zip(axes.flat, TASKS.items()):
        for offset, method, color in ((-8, "vanilla", "#888888"), (8, "blo-mixup", "#1f4e79")):
            xs, means, stds = [], [], []
            for size in sizes:
                values = [v for (t, m, n, _), v in scores.items() if (t, m, n) == (task, method, size)]
                if values:
                    ax.scatter([size + offset] * len(values), values, color=color, s=10, alpha=0.5)
                    mean, std = mean_std(values)
                    xs.append(size + offset), means.append(mean), stds.append(std)
            if xs:
                ax.errorbar(xs, means, yerr=stds, color=color, marker="o", capsize=3, label=method)
        ax.axhline(constant[task], color="#c0392b", linestyle=":", linewidth=1.0, label="constant prediction")
        ax.set_title(title)
        ax.set_xticks(sizes)
        ax.set_xlim(sizes[0] - 60, sizes[-1] + 60)
        ax.set_xlabel("training examples")
        ax.set_ylabel("dev score x100")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.suptitle(f"mean ± std over {seeds_text} (dots: single seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
