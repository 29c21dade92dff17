"""`blo-mixup hypergradients`: every registered hypergradient against the two exact references, on a real
model at points of blo-mixup's phase 1 (blo.hypergradients.references says what the references are).

Phase 1 runs as blo-mixup runs it (default darts, the method's defaults) on the run's data. Just before
each chosen lower step the step is recorded; after it, with dropout off, on one fixed D2 batch and the
lower's last batch, every method's implicit part is compared with both references: cosine (whole vector,
per mixed matrix), norm ratio, sign agreement of the effective attention's change, time of one call (and
its peak memory with --memory). Output: hypergradients.csv, hypergradients.md and hypergradients.png in
the output folder.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import DataOptions
from .errors import UserError


@dataclass
class CheckOptions(DataOptions):
    """The hypergradients command's options: the data options of finetune, then the model and the check."""

    model: str = field(default="minilm", metadata={"help": "model name or path ('minilm' = the packaged MiniLM)"})
    train_size: int | None = field(default=None, metadata={"help": "training examples drawn (as finetune); default: 300 with --task, every row with your own data", "min": 0})
    seed: int = field(default=1, metadata={"help": "seed of the subsample, the D1/D2 split, the head and the data order"})
    epochs: float = field(default=10.0, metadata={"help": "phase-1 length in epochs over D1 (sets the schedules; 'end' in --points is its last step)", "above": 0})
    batch_size: int = field(default=16, metadata={"help": "batch size", "above": 0})
    max_length: int = field(default=128, metadata={"help": "maximum tokens per example", "above": 0})
    lr: float | None = field(default=None, metadata={"help": "lower learning rate; default by model size, as finetune", "above": 0})
    points: str = field(default="2,20,50,end", metadata={"help": "lower steps after which to measure; 'end' = the last step of phase 1 (not 1: its learning rate is 0 under linear warm-up, so its step has no derivative)"})
    hypergradients: str | None = field(default=None, metadata={"help": "comma-separated hypergradients to measure (default: every registered one but direct-only)"})
    max_products: int = field(default=50, metadata={"help": "Hessian-vector products the implicit reference's MINRES may use", "above": 0})
    rtol: float = field(default=1e-3, metadata={"help": "relative residual at which MINRES stops", "above": 0})
    memory: bool = field(default=False, metadata={"help": "also measure each call's peak memory (one more call each)"})
    device: str | None = field(default=None, metadata={"help": "torch device; default CUDA when present, else CPU"})
    output_dir: str | None = field(default=None, metadata={"help": "folder for hypergradients.csv, hypergradients.md and hypergradients.png"})


REFERENCES = ("unrolled", "implicit")


def run_hypergradient_check(options: CheckOptions) -> list[dict]:
    """Measure every hypergradient of options.hypergradients at options.points; write the CSV, the table and
    the plot to options.output_dir (when given); return the rows."""
    from transformers import set_seed

    from .blo import hypergradients as hg
    from .blo.engine import BLOSettings, build_engine
    from .blo.hypergradients import references as ref
    from .blo.mixup import MixupConfig, attach_weight_mixup
    from .config import RunConfig, check_option_values, small_model_lr, with_train_size
    from .data import split_two, subsample
    from .datafiles import load_task_data
    from .models import count_parameters, load_model_and_tokenizer
    from .training import RunContext

    check_option_values(options)
    # direct-only has no implicit part to compare: it is measured only when named
    names = ([hg.get_hypergradient(n).name for n in _names(options.hypergradients)] if options.hypergradients
             else [n for n in hg.hypergradient_names() if n != "direct-only"])
    run = with_train_size(RunConfig(**{k: v for k, v in asdict(options).items() if k in RunConfig.__dataclass_fields__}))
    data = load_task_data(run)
    task = data.task
    set_seed(run.seed)
    model, tokenizer = load_model_and_tokenizer(run.model, task, eager_attention=True)  # second-order methods
    lr = run.lr or small_model_lr(count_parameters(model))
    ctx = RunContext.create(run, task, tokenizer, device=run.device, lr=lr)
    d1_raw, d2_raw = split_two(subsample(data.train, run.train_size or None, run.seed, task), 0.8, run.seed, task)
    d1, d2 = ctx.tokenize(d1_raw), ctx.tokenize(d2_raw)
    mixup = attach_weight_mixup(model, MixupConfig())
    model.to(ctx.device)
    mixup.to(ctx.device)
    d1_loader = ctx.loader(d1, seed_offset=1)
    train_iters = max(1, math.ceil(len(d1_loader) * options.epochs))
    points = _points(options.points, train_iters)
    engine = build_engine(model, mixup, d1_loader, ctx.loader(d2, seed_offset=101),
                          BLOSettings(epochs=options.epochs, lower_lr=lr, lower_weight_decay=run.weight_decay),
                          device=str(ctx.device), train_iters=train_iters)
    lower, upper = engine.weights, engine.attention
    hg.prepare_sama(lower)
    fixed = next(iter(ctx.loader(d2, shuffle=False)))
    fixed = {k: v.to(ctx.device) for k, v in fixed.items()}
    rows = []
    engine.train()
    print(f"{task.name}: {len(d1)} + {len(d2)} examples (D1 + D2), {train_iters} lower steps; measuring after "
          f"{', '.join(map(str, points))}; {len(names)} hypergradients", flush=True)
    while engine.global_step < points[-1]:
        record = ref.StepRecord(lower) if engine.global_step + 1 in points else None
        engine.global_step += 1
        engine.train_step()
        if record is None:
            continue
        record.batch = lower.cur_batch
        model.eval()  # dropout off: every call below sees the same function
        try:
            rows += _measure(engine.global_step, lower, upper, record, fixed, names, options, mixup, ctx.device)
        finally:
            model.train()
    if options.output_dir:
        write_report(rows, Path(options.output_dir), options)
    return rows


def _measure(step, lower, upper, record, batch, names, options, mixup, device) -> list[dict]:
    """One point: both references, then every method against them (a row per method and reference)."""
    import torch
    from betty.hypergradient import jvp_fn_mapping

    from .bench import step_peak_bytes
    from .blo import hypergradients as hg
    from .blo.hypergradients import references as ref

    a_params, w_params = upper.trainable_parameters(), lower.meta_trainable_parameters()
    found = torch.autograd.grad(upper.training_step(batch), [*a_params, *w_params], allow_unused=True)
    zeros = lambda gs, ps: [torch.zeros_like(p) if g is None else g for g, p in zip(gs, ps)]
    direct, vector = zeros(found[:len(a_params)], a_params), zeros(found[len(a_params):], w_params)
    began = time.perf_counter()
    references = {"unrolled": ref.unrolled_reference(lower, upper, record, vector)}
    seconds = {"unrolled": time.perf_counter() - began}
    began = time.perf_counter()
    references["implicit"], products, residual = ref.implicit_reference(lower, upper, vector, max_products=options.max_products,
                                                                       rtol=options.rtol)
    seconds["implicit"] = time.perf_counter() - began
    norm = lambda xs: math.sqrt(sum(float((x.double() ** 2).sum()) for x in xs))
    print(f"after lower step {step}: |direct| {norm(direct):.3e}, |v| {norm(vector):.3e}; unrolled reference "
          f"{seconds['unrolled']:.1f} s; implicit reference {products} Hessian-vector products, relative residual "
          f"{residual:.2e}, {seconds['implicit']:.1f} s", flush=True)
    rows, config = [], lower._config
    try:
        for name in names:
            lower._config = hg.hypergradient_config(name)
            call = lambda: jvp_fn_mapping[lower._config.type](vector, lower, upper, False)
            began = time.perf_counter()
            estimate = call()
            took = time.perf_counter() - began
            peak = step_peak_bytes(call, device) / 2**20 if options.memory else None
            for against in REFERENCES:
                rows.append({"step": step, "hypergradient": name, "reference": against,
                             **ref.agreement(estimate, references[against], mixup), "seconds": took, "peak_mib": peak,
                             "reference_seconds": seconds[against], "implicit_products": products,
                             "implicit_residual": residual, "direct_norm": norm(direct), "estimate_norm": norm(estimate)})
            print(f"  {name}: cosine to unrolled {rows[-2]['cosine']:+.3f}, to implicit {rows[-1]['cosine']:+.3f}; {took:.2f} s", flush=True)
    finally:
        lower._config = config
    return rows


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--hypergradients names none; give registered names, e.g. darts,neumann")
    return names


def _points(text: str, last: int) -> list[int]:
    points = set()
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            point = last if item == "end" else int(item)
        except ValueError:
            raise UserError(f"--points: '{item}' is neither a whole number nor 'end'; e.g. --points 1,20,50,end") from None
        if not 1 <= point <= last:
            raise UserError(f"--points {item}: phase 1 has lower steps 1 to {last} here; pick points in that range")
        points.add(point)
    if not points:
        raise UserError("--points names no step; e.g. --points 1,20,50,end")
    return sorted(points)


FIELDS = ("step", "hypergradient", "reference", "cosine", "cosine_matrix_median", "cosine_matrix_min", "norm_ratio",
          "sign_agreement", "seconds", "peak_mib", "reference_seconds", "implicit_products", "implicit_residual",
          "direct_norm", "estimate_norm")


def write_report(rows: list[dict], folder: Path, options: CheckOptions) -> None:
    """hypergradients.csv (every row), hypergradients.md (per method: cosine to each reference over the
    points, sign agreement, time) and hypergradients.png (cosine against time per call)."""
    from .runs import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "hypergradients.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, FIELDS)
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in FIELDS} for row in rows)
    write_text_atomic(folder / "hypergradients.md", summary_table(rows))
    summary_plot(rows, folder / "hypergradients.png")


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a hypergradients.csv, typed as run_hypergradient_check returns them (so the table and
    the plot rebuild from a committed CSV alone)."""
    integers = ("step", "implicit_products")
    with open(path, newline="") as f:
        return [{k: (v if k in ("hypergradient", "reference") else None if v == "" else int(v) if k in integers else float(v))
                 for k, v in row.items()} for row in csv.DictReader(f)]


def _by_method(rows):
    methods = list(dict.fromkeys(r["hypergradient"] for r in rows))
    return methods, {(m, a): [r for r in rows if r["hypergradient"] == m and r["reference"] == a] for m in methods for a in REFERENCES}


def summary_table(rows: list[dict]) -> str:
    methods, groups = _by_method(rows)
    steps = sorted({r["step"] for r in rows})
    cells = lambda rs, key: " / ".join(f"{r[key]:+.2f}" if r[key] == r[key] else "-" for r in rs)
    lines = [f"Cosine of each hypergradient's implicit part with the two references after lower steps "
             f"{', '.join(map(str, steps))} (one value per point), the share of effective attention entries moved with "
             f"the reference's sign, and the median time of one call.", "",
             "| hypergradient | cosine to unrolled | cosine to implicit | sign agreement (unrolled / implicit, mean) | seconds per call |",
             "|---|---|---|---|---|"]
    for m in methods:
        unrolled, implicit = groups[m, "unrolled"], groups[m, "implicit"]
        mean = lambda rs: statistics.fmean(r["sign_agreement"] for r in rs if r["sign_agreement"] == r["sign_agreement"]) if rs else float("nan")
        lines.append(f"| {m} | {cells(unrolled, 'cosine')} | {cells(implicit, 'cosine')} | {mean(unrolled):.2f} / {mean(implicit):.2f} | "
                     f"{statistics.median(r['seconds'] for r in unrolled):.2f} |")
    residuals = sorted({(r["step"], r["implicit_products"], r["implicit_residual"]) for r in rows})
    lines += ["", "Implicit reference (MINRES on the lower Hessian): " + "; ".join(
        f"step {s}: {p} products, relative residual {res:.1e}" for s, p, res in residuals) + "."]
    return "\n".join(lines) + "\n"


def summary_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import save_figure_atomic

    methods, groups = _by_method(rows)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, against in zip(axes, REFERENCES):
        for m in methods:
            rs = groups[m, against]
            ax.scatter([r["seconds"] for r in rs], [r["cosine"] for r in rs], label=m, s=18)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per call")
        ax.set_title(f"against the {against} reference")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("cosine of the implicit parts")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)
    plt.close(figure)
