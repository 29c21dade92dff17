"""How strong is each hypergradient's implicit term at its defaults, next to the direct term?

Runs blo-mixup's phase 1 (build_engine, default darts) on a small real case, and at a few points
takes ONE upper batch and, for every method, the implicit part of the upper gradient with respect to
the attention A, on the same vector v = dF/dW and the lower's last batch; prints |implicit| / |direct|
(direct = dF/dA) and cosines. docs/hypergradients.md ("How strong each default is") quotes its output.

    OMP_NUM_THREADS=1 .venv/bin/python examples/hypergradient_strength.py           # MiniLM, SST-2, 300 examples

A reference row, "betty-0.2.1-adam", is Betty 0.2.1's precondition_adam (SAMA's P without bias
correction, with the learning rate and the last gradient) through the same finite difference.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from betty.hypergradient import jvp_fn_mapping
from betty.hypergradient.utils import precondition_adam

from blo_mixup.blo import hypergradients as hg
from blo_mixup.data import collator, get_task, load_glue, split_two, subsample, tokenize
from blo_mixup.blo.engine import BLOSettings, build_engine
from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup
from blo_mixup.models import load_model_and_tokenizer



def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", help="GLUE folder in the classic layout (default: the SST-2 shipped with the "
                        "package; another task without it comes from the hub)")
    parser.add_argument("--train-size", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lower-lr", type=float, default=1e-4, help="the project's default for MiniLM")
    parser.add_argument("--epochs", type=float, default=3.0, help="phase-1 length (sets the lower lr schedule)")
    parser.add_argument("--measure-at", default="5,20,40", help="lower steps after which to measure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    torch.manual_seed(args.seed)

    task = get_task(args.task)
    model, tokenizer = load_model_and_tokenizer(args.model, task, eager_attention=True)  # neumann/cg: double backward
    d1, d2 = split_two(subsample(load_glue(task, args.data_dir)["train"], args.train_size, args.seed, task), 0.8, args.seed, task)
    loader = lambda ds: torch.utils.data.DataLoader(tokenize(ds, tokenizer, task, 128), batch_size=args.batch_size,
                                                    shuffle=True, collate_fn=collator(tokenizer))
    mixup = attach_weight_mixup(model, MixupConfig())
    points = [int(x) for x in args.measure_at.split(",")]
    d1_loader = loader(d1)
    train_iters = max(1, round(len(d1_loader) * args.epochs))  # as run_phase1: linear schedule, 10% warm-up
    assert max(points) <= train_iters, f"--measure-at beyond the {train_iters} lower steps of phase 1"
    engine = build_engine(model, mixup, d1_loader, loader(d2), BLOSettings(hypergradient="darts", lower_lr=args.lower_lr),
                          device="cpu", train_iters=train_iters)
    lower, upper = engine.weights, engine.attention
    hg.prepare_sama(lower)
    last_grad = {}  # for the reference row: the gradient of the last lower step (after clipping)
    lower.optimizer.register_step_pre_hook(lambda opt, a, k: last_grad.update(
        {p: p.grad.detach().clone() for g in opt.param_groups for p in g["params"] if p.grad is not None}))
    lower_config = lower.config
    engine.train()
    d2_batches = iter(loader(d2))
    while engine.global_step < max(points):
        engine.global_step += 1
        engine.train_step()
        if engine.global_step not in points:
            continue
        batch = next(d2_batches, None) or next(iter(loader(d2)))
        a_params, w_params = upper.trainable_parameters(), lower.meta_trainable_parameters()
        grads = torch.autograd.grad(upper.training_step(batch), [*a_params, *w_params], allow_unused=True)
        direct = flat([torch.zeros_like(p) if g is None else g for g, p in zip(grads[:len(a_params)], a_params)])
        v = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[len(a_params):], w_params)]
        scales = torch.tensor([float(hg.darts_preconditioner(lower.optimizer, p)) for p in w_params])
        shares = torch.stack([(s * g).pow(2).sum() for s, g in zip(scales, v)])
        names = {p: n for n, p in lower.module.named_parameters()}
        top = ", ".join(f"{names[w_params[i]]} {shares[i] / shares.sum():.0%} (s {scales[i]:.3g})" for i in shares.argsort(descending=True)[:3])
        lr_now = lower.optimizer.param_groups[0]["lr"]
        print(f"\nafter {engine.global_step} of {train_iters} lower steps (lower lr now {lr_now:.3g}): |direct| = {direct.norm():.3e}, "
              f"|v| = {flat(v).norm():.3e}; darts's per-tensor scale s: min {scales.min():.3g}, "
              f"median {scales.median():.3g}, max {scales.max():.3g}; largest parts of |s v|^2: {top}")
        print("| hypergradient (defaults) | abs(implicit) | abs(implicit) / abs(direct) | cosine with direct | cosine with darts-plain | seconds |")
        print("|---|---|---|---|---|---|")
        results = {}
        for name in ("darts-plain", "darts", "sama", "neumann", "cg", "betty-0.2.1-adam"):
            begin = time.perf_counter()
            if name == "betty-0.2.1-adam":
                for p in w_params:
                    lower.optimizer.state[p]["last_grad"] = last_grad[p]
                lower._config = hg.hypergradient_config("darts-plain")
                implicit = hg.darts_plain(precondition_adam(v, lower), lower, upper, False)
                for p in w_params:
                    del lower.optimizer.state[p]["last_grad"]
            else:
                lower._config = hg.hypergradient_config(name)
                implicit = jvp_fn_mapping[lower.config.type](v, lower, upper, False)
            seconds = time.perf_counter() - begin
            results[name] = flat(implicit)
            cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=0).item()
            print(f"| {name} | {results[name].norm():.3e} | {results[name].norm() / direct.norm():.3e} | "
                  f"{cos(results[name], direct):+.3f} | {cos(results[name], results['darts-plain']):+.3f} | {seconds:.1f} |")
        lower._config = lower_config


if __name__ == "__main__":
    main()
