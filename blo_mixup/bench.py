"""`blo-mixup bench`: per-step time and peak memory of each method against plain fine-tuning, one run.

Every case runs on the same synthetic batches (random tokens, batch x max_length, full length) in the
same process, after warm-up; times are medians over --steps. With data options (--task, --train-file,
--dataset, as finetune takes them) the batches are the data's training rows instead, each padded or cut
to max_length, and the head is the data's. Cases:

- vanilla:          one plain step (forward, backward, clipping, AdamW step).
- mixup-step:       the same step on the mixed model with A fixed (a phase-2 step of blo-mixup).
- blo-<hg>-u<U>:    one BLO iteration of blo-mixup: U lower steps on D1 and one upper step on D2 with
                    hypergradient <hg>, through the real Betty engine (engine.build_engine).
- blo-mixup-fast:   one BLO iteration of that preset (its hypergradient, unroll steps and upper lr).
- <method>:         one step of any other method that trains with the shared loop (its own hooks).

Each method names its own cases (Method.bench_cases, built with a CaseBuilder); bench knows no method names.

Memory, as "resident + step peak": resident = bytes of the distinct parameters, buffers (W0),
gradients and optimizer states held between steps; step peak = what one step allocates above that, on
CUDA torch.cuda.max_memory_allocated() minus the allocation before the step, on CPU the highest running
total of tensor allocations during the step, from torch.profiler's memory events. Python objects,
libraries and allocator caching are not counted: this compares what the methods ask of the allocator.

Whole run: the wall time of a run of --train-size examples for --epochs, estimated from the step times:
vanilla = steps(n) x vanilla step; blo-mixup = (lower steps over D1 / U) x BLO iteration + steps(n) x
mixup step (phase 2), with the 80/20 split, both phases --epochs long (a preset: its own phase epochs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
import math
import statistics
import time
from typing import Any, Callable

import torch

from .config import DataOptions

MIB = 2**20


@dataclasses.dataclass
class BenchOptions(DataOptions):
    """bench's options; with data options (--task, --train-file, ...) the head and the batches come from
    that data (its training rows, each padded or cut to --max-length), else synthetic batches for RTE's head."""

    model: str = field(default="minilm", metadata={"help": "model name or path ('minilm' = the packaged MiniLM)"})
    batch_size: int = field(default=16, metadata={"help": "batch size of the batches", "above": 0})
    max_length: int = field(default=128, metadata={"help": "tokens per example (every example is this long)", "above": 0})
    methods: str = field(default="vanilla,blo-mixup", metadata={"help": "comma-separated methods to time against vanilla"})
    hypergradients: str = field(default="darts", metadata={"help": "comma-separated hypergradients for blo-mixup"})
    unroll_steps: str = field(default="1,5", metadata={"help": "comma-separated unroll steps for blo-mixup"})
    steps: int = field(default=5, metadata={"help": "timed steps per case (the median is reported)", "above": 0})
    warmup: int = field(default=2, metadata={"help": "untimed warm-up steps per case"})
    train_size: int | None = field(default=None, metadata={"help": "training examples of the whole run whose wall time is estimated; default: the data's training rows, else 300", "above": 0})
    epochs: float | None = field(default=None, metadata={"help": "epochs of that whole run; default: finetune's for --train-size (config.default_epochs)", "above": 0})
    split_ratio: float = field(default=0.8, metadata={"help": "D1 fraction assumed for blo-mixup's phase 1"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)"})
    memory: bool = field(default=True, metadata={"help": "also measure peak memory (one extra profiled step per case)"})
    device: str | None = field(default=None, metadata={"help": "torch device; default CUDA when present"})
    json: str | None = field(default=None, metadata={"help": "also write the report as JSON to this file"})


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def synthetic_batches(vocab_size: int, options: BenchOptions, count: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    shape = (options.batch_size, options.max_length)
    return [{
        "input_ids": torch.randint(1000, vocab_size, shape, generator=generator),
        "attention_mask": torch.ones(shape, dtype=torch.long),
        "labels": torch.randint(0, 2, (options.batch_size,), generator=generator),
        "idx": torch.arange(i * options.batch_size, (i + 1) * options.batch_size),
    } for i in range(count)]


def has_data(options) -> bool:
    return any(getattr(options, name) is not None for name in ("task", "train_file", "dataset"))


def bench_task(options):
    """The task whose head is measured: the data's (loaded by run_bench), else RTE's."""
    from .data import get_task
    from .datafiles import data_name

    return get_task(data_name(options) if has_data(options) else "rte")


def data_batches(train, tokenizer, task, options: BenchOptions, count: int, offset: int) -> list[dict]:
    """`count` batches of the data's training rows (from row offset * count * batch, wrapping around),
    each example padded or cut to max_length, with their labels."""
    n = count * options.batch_size
    rows = train.select([(offset * n + i) % len(train) for i in range(n)])
    encoded = tokenizer(*[rows[c][:] for c in task.text_columns], truncation=True, padding="max_length",
                        max_length=options.max_length, return_tensors="pt")
    labels = torch.tensor(rows["label"][:], dtype=torch.float32 if task.is_regression else torch.long)
    size = options.batch_size
    return [{**{k: v[i * size:(i + 1) * size] for k, v in encoded.items()}, "labels": labels[i * size:(i + 1) * size],
             "idx": torch.arange(i * size, (i + 1) * size)} for i in range(count)]


def to_device(batches, device):
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not torch.is_tensor(t):
            continue
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def resident_tensors(*modules, optimizers=()) -> list:
    tensors = []
    for module in modules:
        tensors += list(module.parameters()) + list(module.buffers()) + [p.grad for p in module.parameters()]
    for optimizer in optimizers:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    return tensors


def step_peak_bytes(step: Callable[[], None], device) -> int:
    """Peak bytes allocated during one call of `step` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def median_time(step: Callable[[], None], warmup: int, steps: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Case:
    """A measured case: a closure for one step (or iteration) and the tensors it keeps between steps."""

    def __init__(self, name: str, step: Callable[[], None], resident: Callable[[], list], *, lower_steps: int = 1,
                 note: str = "", phase_epochs: tuple | None = None):
        self.name, self.step, self.resident, self.lower_steps, self.note = name, step, resident, lower_steps, note
        self.phase_epochs = phase_epochs  # (phase 1, phase 2) epochs of a preset; None: --epochs for both


def _load(options: BenchOptions, eager: bool, device):
    from .models import load_model_and_tokenizer

    torch.manual_seed(0)  # the same head everywhere
    model, tokenizer = load_model_and_tokenizer(options.model, bench_task(options), eager_attention=eager)
    return model.to(device).train(), tokenizer


def _context(options, tokenizer, device):
    from .config import RunConfig
    from .training import RunContext

    task = bench_task(options)
    run = RunConfig(task=task.name, batch_size=options.batch_size, max_length=options.max_length)
    return RunContext.create(run, task, tokenizer, device=device, lr=1e-4)


def shared_loop_case(name: str, method, options, batches, device, eager: bool = False) -> Case:
    """One step of the shared training loop (training.training_step) with `method`'s hooks."""
    from .training import Optimization, training_step

    model, tokenizer = _load(options, eager, device)
    ctx = _context(options, tokenizer, device)
    model = method.prepare_model(model, ctx)
    model.to(device).train()
    opt = Optimization.build(model, method, ctx, lr=1e-5, total_steps=10**6, max_grad_norm=1.0)
    counter = iter(range(1, 10**9))

    def step():
        i = next(counter)
        training_step(model, method, ctx, batches[i % len(batches)], i, opt)

    extra = [getattr(method, "mixup", None)] if getattr(method, "mixup", None) is not None else []
    return Case(name, step, lambda: resident_tensors(model, *extra, optimizers=[opt.optimizer]))


def blo_case(hypergradient, options, batches_d1, batches_d2, device, *, name: str, upper_lr: float = 2e-3,
             phase_epochs: tuple | None = None) -> Case:
    """One BLO iteration with `hypergradient` (blo.hypergradients.HypergradientSettings: its unroll steps
    lower steps, then one upper step)."""
    from .blo.engine import BLOSettings, build_engine
    from .blo.mixup import MixupConfig, attach_weight_mixup

    model, _ = _load(options, hypergradient.second_order, device)
    mixup = attach_weight_mixup(model, MixupConfig())
    settings = BLOSettings(hypergradient=hypergradient, lower_lr=1e-5, upper_lr=upper_lr)
    engine = build_engine(model, mixup, batches_d1, batches_d2, settings, device=str(device), train_iters=10**6)
    engine.train()
    unroll = hypergradient.unroll_steps

    def iteration():
        for _ in range(unroll):
            engine.train_step()

    return Case(name, iteration,
                lambda: resident_tensors(model, mixup, optimizers=[engine.weights.optimizer, engine.attention.optimizer]),
                lower_steps=unroll, note=f"{unroll} lower + 1 upper step", phase_epochs=phase_epochs)


def build_cases(options: BenchOptions, device, data=None) -> list[Case]:
    """The cases to time; `data` (a data.TaskData) gives the batches, else synthetic ones."""
    from .methods import get_method

    methods = _csv(options.methods)
    for name in methods:
        get_method(name)
    from transformers import AutoConfig, AutoTokenizer

    from .models import resolve_model_path

    path = resolve_model_path(options.model)
    if data is not None:
        tokenizer = AutoTokenizer.from_pretrained(path)
        batches = to_device(data_batches(data.train, tokenizer, data.task, options, 4, offset=0), device)
        d2 = to_device(data_batches(data.train, tokenizer, data.task, options, 2, offset=2), device)
    else:
        vocab = AutoConfig.from_pretrained(path).vocab_size
        batches = to_device(synthetic_batches(vocab, options, 4, seed=0), device)
        d2 = to_device(synthetic_batches(vocab, options, 2, seed=1), device)
    bench = CaseBuilder(options, batches, d2, device)
    bench.shared_loop("vanilla", get_method("vanilla")())  # the baseline, first
    for name in methods:  # each method says what of it is timed (Method.bench_cases)
        if not get_method(name)().bench_cases(bench):
            print(f"{name}: not timed per step (its training is not the shared loop; time whole runs with compare)")
    return bench.cases


class CaseBuilder:
    """What a method's bench_cases hook builds its cases with. Each case is built once, in the order asked
    (a second request by the same name returns the first: vanilla, and the mixup step of several presets)."""

    def __init__(self, options: BenchOptions, batches, batches_d2, device):
        self.options, self.batches, self.batches_d2, self.device = options, batches, batches_d2, device
        self.hypergradients = _csv(options.hypergradients)  # --hypergradients and --unroll-steps, for blo-mixup
        self.unroll_steps = [int(u) for u in _csv(options.unroll_steps)]
        self.cases: list[Case] = []

    def _once(self, name: str, build: Callable[[], Case]) -> Case:
        case = next((c for c in self.cases if c.name == name), None)
        if case is None:
            case = build()
            self.cases.append(case)
        return case

    def shared_loop(self, name: str, method) -> Case:
        """One step of the shared training loop with `method`'s hooks."""
        return self._once(name, lambda: shared_loop_case(name, method, self.options, self.batches, self.device))

    def mixup_step(self) -> Case:
        """A phase-2 step of the core method: the mixed model with A fixed."""
        return self._once("mixup-step", lambda: _mixup_step_case(self.options, self.batches, self.device))

    def blo(self, hypergradient, *, name: str | None = None, upper_lr: float = 2e-3, phase_epochs: tuple | None = None) -> Case:
        """One BLO iteration (unroll lower steps and one upper step) through the real Betty engine, with
        `hypergradient` (blo.hypergradients.HypergradientSettings) as the method built it."""
        name = name or f"blo-{hypergradient.name}-u{hypergradient.unroll_steps}"
        return self._once(name, lambda: blo_case(hypergradient, self.options, self.batches, self.batches_d2,
                                                 self.device, name=name, upper_lr=upper_lr, phase_epochs=phase_epochs))


def _mixup_step_case(options, batches, device) -> Case:
    """A phase-2 step: the mixed model with A fixed, trained like plain fine-tuning."""
    from .methods import get_method
    from .blo.mixup import MixupConfig, attach_weight_mixup

    vanilla = get_method("vanilla")()

    class MixedFixed(type(vanilla)):
        def prepare_model(self, model, ctx):
            self.mixup = attach_weight_mixup(model, MixupConfig())
            self.mixup.requires_grad_(False)
            return model

    return shared_loop_case("mixup-step", MixedFixed(), options, batches, device)


def run_bench(options: BenchOptions) -> dict[str, Any]:
    from .config import check_option_values
    from .models import pick_device
    from .training import steps_for

    if options.threads:
        torch.set_num_threads(options.threads)
    data = None
    check_option_values(options)  # the ranges its fields' metadata declares
    if has_data(options):  # read and check the data first
        from .config import check_data_options
        from .datafiles import load_task_data

        check_data_options(options)
        data = load_task_data(options)
    if options.train_size is None:
        options = dataclasses.replace(options, train_size=len(data.train) if data is not None else 300)
    device = pick_device(options.device)
    cases = build_cases(options, device, data)
    rows = []
    for case in cases:
        seconds = median_time(case.step, options.warmup, options.steps, device)
        row = {"case": case.name, "note": case.note, "step_s": seconds, "lower_steps": case.lower_steps,
               "phase_epochs": case.phase_epochs}
        if options.memory:
            peak = step_peak_bytes(case.step, device)
            resident = tensor_bytes(case.resident())
            row.update(resident_mib=resident / MIB, step_peak_mib=peak / MIB, peak_mib=(resident + peak) / MIB)
        rows.append(row)
        print(f"  {case.name}: {seconds * 1000:.0f} ms" + (f", peak {row['peak_mib']:.0f} MiB" if options.memory else ""), flush=True)
    base = rows[0]
    for row in rows:
        row["time_ratio"] = row["step_s"] / base["step_s"]
        if options.memory:
            row["memory_ratio"] = row["peak_mib"] / base["peak_mib"]
    whole = whole_run_ratios(rows, options, steps_for)
    return {"options": dataclasses.asdict(options), "device": str(device), "threads": torch.get_num_threads(),
            "cases": rows, "whole_run": whole}


def whole_run_ratios(rows, options: BenchOptions, steps_for) -> dict[str, Any]:
    from .config import default_epochs

    by_name = {r["case"]: r for r in rows}
    epochs = options.epochs or default_epochs(options.train_size, options.batch_size)
    plain_steps = steps_for(options.train_size, options.batch_size, epochs)
    vanilla_s = plain_steps * by_name["vanilla"]["step_s"]
    result = {"train_size": options.train_size, "epochs": epochs, "vanilla_s": vanilla_s}
    d1 = math.floor(options.split_ratio * options.train_size + 0.5)
    for row in rows:
        if row["case"].startswith("blo-") and "mixup-step" in by_name:
            phase1, phase2 = row.get("phase_epochs") or (None, None)
            phase1 = epochs if phase1 is None else phase1
            phase2 = epochs if phase2 is None else phase2
            seconds = (steps_for(d1, options.batch_size, phase1) / row["lower_steps"] * row["step_s"]
                       + (steps_for(options.train_size, options.batch_size, phase2) if phase2 > 0 else 0)
                       * by_name["mixup-step"]["step_s"])
            result[row["case"]] = {"seconds": seconds, "ratio": seconds / vanilla_s}
    return result


def format_report(report: dict) -> str:
    o = report["options"]
    lines = [f"blo-mixup bench: {o['model']}, batch {o['batch_size']} x {o['max_length']}, {report['device']}, "
             f"{report['threads']} threads, median of {o['steps']} after {o['warmup']} warm-up", ""]
    memory = o["memory"]
    header = "| case | per step (ms) | x vanilla |" + (" peak MiB (resident + step) | x vanilla |" if memory else "")
    lines += [header, "|---|---|---|" + ("---|---|" if memory else "")]
    for row in report["cases"]:
        name = row["case"] + (f" ({row['note']})" if row["note"] else "")
        line = f"| {name} | {row['step_s'] * 1000:.0f} | {row['time_ratio']:.2f} |"
        if memory:
            line += f" {row['peak_mib']:.0f} ({row['resident_mib']:.0f} + {row['step_peak_mib']:.0f}) | {row['memory_ratio']:.2f} |"
        lines.append(line)
    whole = report["whole_run"]
    runs = [(k, v) for k, v in whole.items() if isinstance(v, dict)]
    if runs:
        lines += ["", f"Whole run, {whole['train_size']} examples x {whole['epochs']:g} epochs (estimated from the step times): "
                  f"vanilla {whole['vanilla_s']:.0f} s; " + "; ".join(f"{k} {v['seconds']:.0f} s = {v['ratio']:.2f}x" for k, v in runs)]
    return "\n".join(lines)
