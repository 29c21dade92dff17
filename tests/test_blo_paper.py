"""blo-mixup-paper: the official code's form, initialisation and fold averaging, as a preset of blo-mixup."""

import torch

from blo_mixup.config import RunConfig
from blo_mixup.data import get_task
from blo_mixup.methods import get_method


def test_paper_preset_options_and_initial_attention(tiny_bert_dir):
    from blo_mixup.models import load_model_and_tokenizer

    run = RunConfig(task="rte", train_size=300)
    method = get_method("blo-mixup-paper")(run=run)
    o = method.options
    assert (o.mixup_form, o.mixup_init_std, o.folds, o.hypergradient) == ("paper", 0.005, 5, "darts")
    # folds are averaged, not chained: the same W-update count as blo-mixup
    assert method.planned_weight_updates(300, run) == get_method("blo-mixup")(run=run).planned_weight_updates(300, run)

    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(str(tiny_bert_dir), get_task("rte"))
    method.prepare_model(model, None)
    factors = torch.cat([p.detach().flatten() for p in method.mixup.parameters()])
    assert factors.max() <= 1.0 and factors.min() >= 1.0 - 0.05  # N(1, 0.005), clamped to [0, 1]
    below = factors[factors < 1.0]
    assert 0.4 < len(below) / len(factors) < 0.6  # noise below 1 kept, above 1 clamped to 1
    assert 0.003 < (1.0 - below).mean() < 0.005  # half-normal mean of std 0.005: 0.0040
