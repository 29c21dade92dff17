"""Your own hypergradient: register a function by name, then train with it like a built-in one.

"scaled-identity" takes `scale` times the identity as the inverse lower Hessian (darts-plain's
assumption, rescaled) and computes the mixed second derivative exactly with autograd, where darts-plain
takes a finite difference:   implicit part = -(d2 L_low / d lambda d w) . (scale * v).

    .venv/bin/python examples/custom_hypergradient.py                      # the packaged MiniLM
    .venv/bin/python examples/custom_hypergradient.py --model path/to/model --epochs 1

Importing this file registers the name, so a config file can use it too (docs/hypergradients.md):
    hypergradient_module: examples/custom_hypergradient.py
    hypergradient: scaled-identity
    hypergradient_options: {scale: 2.0}
"""

import argparse

import pandas as pd
import torch

import blo_mixup
from blo_mixup.blo.hypergradients import options_of


# --- the user code ---------------------------------------------------------------------------------
def scaled_identity(vector, curr, prev, sync):
    """Betty's signature: vector = dF/dw (one tensor per lower weight); curr the lower problem, prev the upper."""
    lower, upper = curr.meta_trainable_parameters(), prev.trainable_parameters()
    loss = curr.training_step(curr.cur_batch)  # the lower loss on its last batch
    grads = torch.autograd.grad(loss, lower, create_graph=True, allow_unused=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector) if g is not None)  # (dL/dw) . v
    mixed = torch.autograd.grad(dot, upper, allow_unused=True)  # d/d lambda of it: a second derivative
    scale = options_of(curr)["scale"]
    return [torch.zeros_like(p) if m is None else -scale * m for m, p in zip(mixed, upper)]


blo_mixup.register_hypergradient("scaled-identity", scaled_identity, options={"scale": 1.0}, second_order=True,
                                 replace=True)  # replace: importing this file twice is fine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    words = ["good", "bad"]
    data = pd.DataFrame({"text": [f"a {words[i % 2]} film, number {i}" for i in range(24)],
                         "label": [words[i % 2] for i in range(24)]})
    result = blo_mixup.fit(args.model, data, hypergradient="scaled-identity", hypergradient_options={"scale": 2.0},
                           text_columns="text", epochs=args.epochs, batch_size=8, max_length=32,
                           output_dir=args.output_dir)
    print("evaluation set:", ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
    return result
# ---------------------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
