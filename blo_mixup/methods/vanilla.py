"""Plain fine-tuning: AdamW, linear schedule with warmup, gradient clipping (the shared loop as is),
and the same at another method's weight-update budget (vanilla-matched), the control that tells a
method's effect from its extra updates."""

from dataclasses import dataclass, field

from .base import Method, register


@register
class Vanilla(Method):
    name = "vanilla"
    summary = "plain fine-tuning (AdamW, linear warmup/decay, clipping)"


@dataclass
class MatchedOptions:
    match_method: str = field(default="blo-mixup", metadata={"help": "vanilla-matched: take as many weight updates as this method does at its defaults"})


@register
class VanillaMatched(Vanilla):
    """Plain fine-tuning with as many optimizer steps on W as another method takes under the same run
    options (blo-mixup by default: phase 1 over D1 plus phase 2): the same loop, stretched to that count,
    its linear schedule over all of them."""

    name = "vanilla-matched"
    options_class = MatchedOptions
    summary = "plain fine-tuning with as many weight updates as --match-method (default blo-mixup) takes: the budget control"

    def __init__(self, options=None, run=None):
        super().__init__(options, run)
        from .base import get_method

        if self.options.match_method == self.name:
            from ..errors import UserError

            raise UserError("--match-method vanilla-matched matches itself; name another method, e.g. blo-mixup")
        self.matched = get_method(self.options.match_method)(run=run)

    def fit(self, model, ctx):
        from ..training import train_loop

        steps = self.matched.planned_weight_updates(len(ctx.train), ctx.run)
        stats = train_loop(model, self, ctx, self.training_data(ctx), epochs=ctx.run.epochs, lr=ctx.lr, steps=steps)
        return {**stats, "matched_method": self.options.match_method}
