"""Plain fine-tuning: AdamW, linear schedule with warmup, gradient clipping (the shared loop as is)."""

from .base import Method, register


@register
class Vanilla(Method):
    name = "vanilla"
    summary = "plain fine-tuning (AdamW, linear warmup/decay, clipping)"
