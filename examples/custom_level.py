"""Your own level: learned class weights on top of the bi-level mixup, declared in one place.

"class_weights" holds one weight per class, w_c = 2 sigmoid(r_c) (1 at the start). They scale the task
weights' per-example losses on D1 (so the level sits ABOVE "weights"), and they are learned so that the
mixed model does well on D2 (so its loss READS "weights"). The engine builds the Betty graph from that
declaration: u2l {class_weights: [weights]}, l2u {weights: [attention, class_weights]}, and gives the
level's edge the run's --hypergradient (carried by "weights"). Classification data only.

    .venv/bin/python examples/custom_level.py                      # the packaged MiniLM
    .venv/bin/python examples/custom_level.py --model path/to/model --epochs 1

Importing this file registers the level, so a config file can use it too (docs/extending.md):
    level_module: examples/custom_level.py
    add_levels: class_weights
    level_options: {lr: 0.05}
"""

import argparse

import pandas as pd
import torch

import blo_mixup
from blo_mixup.blo.engine import adam
from blo_mixup.blo.problems import SingleBackwardUpper, per_example_loss


# --- the user code ---------------------------------------------------------------------------------
class ClassWeighting(SingleBackwardUpper):
    """A Betty problem: its module's parameter r (one per class); its loss, the mixed model on D2."""

    def training_step(self, batch):
        return per_example_loss(self.model, batch).mean()

    def shape_lower_loss(self, lower, batch, losses, loss):  # the lower level's loss, weighted by class
        weights = 2 * torch.sigmoid(self.module.raw)[batch["labels"]]
        return (weights * losses).sum() / weights.sum()


def build(ctx, config):
    module = torch.nn.Module()
    module.raw = torch.nn.Parameter(torch.zeros(ctx.model.config.num_labels))
    optimizer = adam(module.parameters(), float(ctx.options.get("lr", 0.01)), 0.0)
    problem = ClassWeighting("class_weights", config, module, optimizer, None, ctx.loaders["top"])
    problem.model = ctx.model
    return problem


blo_mixup.register_level("class_weights", build, above=("weights",), reads=("weights",), replace=True,
                         stats=lambda problem: {"class_weights": (2 * torch.sigmoid(problem.module.raw)).tolist()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    words = ["good", "bad", "bad"]  # two classes, one twice as frequent
    data = pd.DataFrame({"text": [f"a {words[i % 3]} film, number {i}" for i in range(36)],
                         "label": [words[i % 3] for i in range(36)]})
    result = blo_mixup.fit(args.model, data, add_levels="class_weights", level_options={"lr": 0.05},
                           text_columns="text", epochs=args.epochs, batch_size=8, max_length=32,
                           output_dir=args.output_dir)
    print("class weights:", [round(w, 4) for w in result.results["blo"]["phase1"]["class_weights"]])
    print("evaluation set:", ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
    return result
# ---------------------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
