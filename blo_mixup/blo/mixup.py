"""Attention-guided weight mixup: attach it to a model, inspect it, merge it away.

Every targeted weight W of the model is used through an effective weight

    convex:  W_eff = A * W + (1 - A) * W0          (computed as one fused lerp: W0 + A * (W - W0))
    paper:   W_eff = (a @ c) * W + ((1 - a) @ (1 - c)) * W0     (the official code's form)

W is the model's own Parameter (trained by the lower level), W0 a frozen copy of the pretrained
weight (a buffer), A the learnable attention (trained by the upper level). The transform is a
`torch.nn.utils.parametrize` parametrization of `weight`, so the model's code and forward signature
stay untouched. The attention lives in a separate `WeightMixup` module: the model never registers
it, so `model.parameters()` and `WeightMixup.parameters()` are disjoint, as the two Betty problems
need.

    mixup = attach_weight_mixup(model, MixupConfig(rank=1))
    ...train model.parameters() and mixup.parameters()...
    merge_weight_mixup(model)          # plain transformers model again; save_pretrained works
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import UserError, unknown_choice

try:  # GPT-2 style layers: a Linear whose weight is stored transposed, (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is a dependency, but keep the transform usable without it
    Conv1D = None

__all__ = [
    "MixupConfig",
    "WeightMixup",
    "attach_weight_mixup",
    "merge_weight_mixup",
    "is_mixed",
    "target_module_names",
]

GRANULARITIES = ("rank", "element", "row", "matrix")
FORMS = ("convex", "paper")
CONSTRAINTS = ("clamp", "sigmoid")

# A sigmoid never reaches 0 or 1: under constraint "sigmoid" every initial attention value (or
# rank factor) is kept this far inside (0, 1).
SIGMOID_MARGIN = 0.01

# Default targets. A module is mixed when it is a Linear/Conv1D, one of the dotted parts of its name
# names a layer stack or the pooler, and none names a task head or an embedding.
STACK_PARTS = frozenset(
    {"encoder", "decoder", "layer", "layers", "h", "block", "blocks", "transformer", "pooler"}
)
HEAD_OR_EMBEDDING_PARTS = frozenset(
    {
        "classifier", "classification_head", "pre_classifier", "score", "lm_head", "qa_outputs",
        "cls", "predictions", "sequence_summary", "generator_predictions", "generator_lm_head",
        "discriminator_predictions", "embeddings", "embed_tokens", "embed_positions",
        "word_embeddings", "position_embeddings", "shared", "wte", "wpe",
    }
)


@dataclass
class MixupConfig:
    """What to mix and how.

    granularity: "rank" (A = a @ c / rank, a: out x rank, c: rank x in), "element" (one A entry per
        weight), "row" (one per output unit) or "matrix" (one scalar per weight matrix).
    rank: the rank r of A for granularity "rank".
    form: "convex" (A*W + (1-A)*W0) or "paper" ((a@c)*W + ((1-a)@(1-c))*W0, granularity "rank" only).
    constraint: "clamp" (keep A's parameters in [0, 1] by `WeightMixup.project_()` after every
        update) or "sigmoid" (the parameters are logits; no projection needed).
    init: initial attention value A in [0, 1]; 1.0 means W_eff = W.
    init_std: standard deviation of Gaussian noise added to the initial values (the paper: 0.005),
        which are then clamped back into [0, 1].
    target_modules: regular expressions searched (re.search) in module names; None = every
        Linear/Conv1D of the layer stack and the pooler (see `target_module_names`).
    exclude_modules: regular expressions of module names never mixed, applied after the targets.
    """

    granularity: str = "rank"
    rank: int = 1
    form: str = "convex"
    constraint: str = "clamp"
    init: float = 1.0
    init_std: float = 0.0
    target_modules: list[str] | None = None
    exclude_modules: list[str] | None = None

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise unknown_choice("mixup granularity", self.granularity, GRANULARITIES)
        if self.form not in FORMS:
            raise unknown_choice("mixup form", self.form, FORMS)
        if self.constraint not in CONSTRAINTS:
            raise unknown_choice("mixup constraint", self.constraint, CONSTRAINTS)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"mixup rank {self.rank!r} is not a positive integer; pass rank >= 1")
        if self.form == "paper" and self.granularity != "rank":
            raise UserError(
                f"mixup form 'paper' needs granularity 'rank', got '{self.granularity}'; "
                "use form 'convex' (the same formula for a single A) or granularity 'rank'"
            )
        if not isinstance(self.init, (int, float)) or not 0.0 <= float(self.init) <= 1.0:
            raise UserError(f"mixup init {self.init!r} is outside [0, 1]; pass a value in [0, 1]")
        if not isinstance(self.init_std, (int, float)) or float(self.init_std) < 0.0:
            raise UserError(f"mixup init_std {self.init_std!r} is negative; pass a value >= 0")
        if isinstance(self.target_modules, str):  # one pattern given bare
            self.target_modules = [self.target_modules]
        if isinstance(self.exclude_modules, str):
            self.exclude_modules = [self.exclude_modules]
        self.patterns("target_modules")  # fail now on a bad regular expression
        self.patterns("exclude_modules")

    def patterns(self, option: str) -> list[re.Pattern] | None:
        """The compiled regular expressions of target_modules or exclude_modules (None if unset)."""
        raw = getattr(self, option)
        if raw is None:
            return None
        compiled = []
        for pattern in raw:
            try:
                compiled.append(re.compile(pattern))
            except (re.error, TypeError) as error:
                raise UserError(
                    f"mixup {option} pattern {pattern!r} is not a valid regular expression ({error}); "
                    "fix the pattern"
                ) from None
        return compiled


# --------------------------------------------------------------------------------------------------
# The attention of one weight matrix


class _Attention(nn.Module):
    """The learnable attention of one mixed weight matrix (shared by the modules that tie it).

    Its parameters are `a` (and `c` for granularity "rank"); under constraint "sigmoid" they are
    logits. `coefficient()` gives A in the stored orientation of the weight (Conv1D stores (in, out)).
    """

    def __init__(self, config: MixupConfig, out_features, in_features, transposed, device, dtype):
        super().__init__()
        self.granularity = config.granularity
        self.form = config.form
        self.constraint = config.constraint
        self.rank = config.rank
        self.transposed = transposed
        self.weight_shape = (in_features, out_features) if transposed else (out_features, in_features)
        init = float(config.init)
        if self.granularity == "rank":
            # A = a @ c / r, so factors of sqrt(init) give A = init everywhere.
            factor = math.sqrt(init)
            self.a = nn.Parameter(self._initial((out_features, self.rank), factor, config, device, dtype))
            self.c = nn.Parameter(self._initial((self.rank, in_features), factor, config, device, dtype))
        else:
            shape = {
                "element": (in_features, out_features) if transposed else (out_features, in_features),
                "row": (1, out_features) if transposed else (out_features, 1),
                "matrix": (),
            }[self.granularity]
            self.a = nn.Parameter(self._initial(shape, init, config, device, dtype))

    def _initial(self, shape, value, config, device, dtype):
        # Built in float32 at least (in float64 for a float64 model, so that A is exactly `value` there).
        values = torch.full(shape, value, device=device, dtype=torch.promote_types(dtype or torch.float32, torch.float32))
        if config.init_std > 0:
            values += torch.randn(shape, device=device) * config.init_std
        if self.constraint == "sigmoid":
            values = torch.logit(values.clamp(SIGMOID_MARGIN, 1 - SIGMOID_MARGIN))
        else:
            values = values.clamp(0.0, 1.0)
        return values.to(dtype)

    def factors(self):
        """The constrained values of the parameters (in [0, 1])."""
        params = (self.a, self.c) if self.granularity == "rank" else (self.a,)
        if self.constraint == "sigmoid":
            return tuple(torch.sigmoid(p) for p in params)
        return params

    def _outer(self, a, c):
        """a @ c / rank in the weight's stored orientation; the 1/rank keeps A in [0, 1]."""
        if self.rank > 1:
            a = a / self.rank
        return torch.mm(c.t(), a.t()) if self.transposed else torch.mm(a, c)

    def coefficient(self):
        """A, the weight on W: broadcastable to the stored weight."""
        factors = self.factors()
        return self._outer(*factors) if self.granularity == "rank" else factors[0]

    def mix(self, weight, w0):
        """W_eff in one fused expression."""
        if self.form == "paper":
            a, c = self.factors()
            on_w = self._outer(a, c).to(weight.dtype)
            on_w0 = self._outer(1 - a, 1 - c).to(weight.dtype)
            return torch.addcmul(on_w0 * w0, on_w, weight)
        # lerp(W0, W, A) = W0 + A * (W - W0): a single kernel, one output, no (W - W0) temporary.
        return torch.lerp(w0, weight, self.coefficient().to(weight.dtype))

    @torch.no_grad()
    def project_(self):
        if self.constraint == "clamp":
            for p in self.parameters():
                p.clamp_(0.0, 1.0)


class _MixedWeight(nn.Module):
    """The parametrization put on `module.weight`: W -> W_eff.

    It owns W0 as a buffer (so `model.to()` moves it and no optimizer ever sees it) and holds the
    attention by a plain reference, so the model does not register the attention parameters.
    """

    def __init__(self, w0: torch.Tensor, attention: _Attention):
        super().__init__()
        self.register_buffer("w0", w0)
        object.__setattr__(self, "attention", attention)  # not a submodule: see class docstring

    def forward(self, weight):
        return self.attention.mix(weight, self.w0)


# --------------------------------------------------------------------------------------------------
# Choosing the modules


def _is_mixable(module) -> bool:
    return isinstance(module, nn.Linear) or (Conv1D is not None and isinstance(module, Conv1D))


def _is_default_target(name: str) -> bool:
    parts = set(name.split("."))
    return bool(parts & STACK_PARTS) and not parts & HEAD_OR_EMBEDDING_PARTS


def target_module_names(model: nn.Module, config: MixupConfig | None = None) -> list[str]:
    """Names of the Linear/Conv1D modules `attach_weight_mixup` would mix, in model order.

    Without target_modules: those whose name has a layer-stack or pooler part (encoder, decoder,
    layer, layers, h, block, blocks, transformer, pooler) and no head or embedding part
    (classifier, score, lm_head, qa_outputs, pre_classifier, cls, embeddings, wte, ...).
    With target_modules: those matching any pattern (re.search). exclude_modules then removes.
    Modules reused at several depths (ALBERT) are listed once.
    """
    config = config or MixupConfig()
    targets = config.patterns("target_modules")
    excludes = config.patterns("exclude_modules") or []
    names = []
    for name, module in model.named_modules():
        if not _is_mixable(module):
            continue
        if targets is None:
            chosen = _is_default_target(name)
        else:
            chosen = any(pattern.search(name) for pattern in targets)
        if chosen and not any(pattern.search(name) for pattern in excludes):
            names.append(name)
    return names


def _full_name(module_name: str, param_name: str) -> str:
    return f"{module_name}.{param_name}" if module_name else param_name


def _weight_owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every "module.param" name under which it is registered (ties included)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append(_full_name(module_name, param_name))
    return owners


# --------------------------------------------------------------------------------------------------
# The public objects


class WeightMixup(nn.Module):
    """Owns the attention parameters of a mixed model, and nothing else.

    `parameters()` yields exactly the attention parameters; the model is reachable as `.model` but is
    not a submodule. Calling the WeightMixup calls the model. Freeze the attention (phase 2) with
    `mixup.requires_grad_(False)`. Move it with `.to(device)` like any module (the model separately).
    """

    def __init__(self, model: nn.Module, config: MixupConfig, attentions: dict, module_names: dict):
        super().__init__()
        object.__setattr__(self, "_model", model)  # a plain reference: see class docstring
        self._config = config
        # ModuleDict keys cannot hold dots; the readable names are kept in _module_names.
        self.attentions = nn.ModuleDict(attentions)
        self._module_names = module_names  # key -> names of the modules sharing that attention

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def config(self) -> MixupConfig:
        return self._config

    def forward(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def attention_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def task_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter of the model that is not attention (W0 is a buffer)."""
        attention_ids = {id(p) for p in self.parameters()}
        seen, params = set(), []
        for param in self._model.parameters():
            if param.requires_grad and id(param) not in attention_ids and id(param) not in seen:
                seen.add(id(param))
                params.append(param)
        return params

    def num_attention_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def mixed_module_names(self) -> list[str]:
        """Every mixed module name; modules that tie one weight share one attention."""
        return [name for names in self._module_names.values() for name in names]

    def _named_attentions(self):
        for key, attention in self.attentions.items():
            yield self._module_names[key][0], attention

    @torch.no_grad()
    def attention_by_module(self) -> dict[str, torch.Tensor]:
        """{module name: A}, A detached, float32, with the shape of the stored weight.

        Tied weights appear once, under the first module name (see `mixed_module_names`).
        """
        result = {}
        for name, attention in self._named_attentions():
            result[name] = attention.coefficient().float().expand(attention.weight_shape).clone()
        return result

    @torch.no_grad()
    def attention_stats(self) -> dict[str, dict[str, float]]:
        """{module name: {"mean", "std", "min", "max"}} of A over the entries of each weight."""
        stats = {}
        for name, attention in self._named_attentions():
            values = attention.coefficient().float().expand(attention.weight_shape)
            stats[name] = {
                "mean": values.mean().item(),
                "std": values.std(unbiased=False).item(),
                "min": values.min().item(),
                "max": values.max().item(),
            }
        return stats

    @torch.no_grad()
    def attention_summary(self) -> dict[str, float]:
        """Overall mean, std, min and max of A over every mixed weight entry, plus counts."""
        total = count = squares = 0.0
        low, high = math.inf, -math.inf
        for name, attention in self._named_attentions():
            values = attention.coefficient().double().expand(attention.weight_shape)
            n = values.numel()
            total += values.sum().item()
            squares += values.square().sum().item()
            count += n
            low, high = min(low, values.min().item()), max(high, values.max().item())
        mean = total / count
        return {
            "mean": mean,
            "std": math.sqrt(max(squares / count - mean * mean, 0.0)),
            "min": low,
            "max": high,
            "num_modules": len(self.attentions),
            "num_attention_parameters": self.num_attention_parameters(),
        }

    @torch.no_grad()
    def project_(self) -> None:
        """Enforce the constraint in place: clamp to [0, 1]; nothing to do under "sigmoid"."""
        for attention in self.attentions.values():
            attention.project_()


# --------------------------------------------------------------------------------------------------
# Guards against the two ways an ordinary training loop misuses a mixed model


class _AttentionWatch:
    """Warns once when the model trains while its attention gets gradients but never changes.

    The attention is not in `model.parameters()`, so a Trainer or a plain loop over the model's
    parameters trains W alone and leaves A where it started, silently. A forward pre-hook counts the
    training-mode forwards after which every attention parameter holds a gradient and none has been
    modified in place since (torch's tensor version counter: optimizer steps bump it); at `patience`
    such forwards in a row it warns. Frozen attention (requires_grad False, as in phase 2) has no
    gradient and is never reported; the bi-level method steps A every --unroll-steps forwards.
    """

    def __init__(self, mixup: "WeightMixup", patience: int = 50):
        self.mixup, self.patience = mixup, patience
        self.versions, self.unchanged, self.warned = None, 0, False

    def __call__(self, module, args):
        if self.warned or not module.training:
            return
        params = list(self.mixup.parameters())
        if not params or any(p.grad is None or not p.requires_grad for p in params):
            self.versions, self.unchanged = None, 0
            return
        versions = [p._version for p in params]
        self.unchanged = self.unchanged + 1 if versions == self.versions else 0
        self.versions = versions
        if self.unchanged >= self.patience:
            self.warned = True
            warnings.warn(
                f"the weight mixup's attention has received gradients for {self.patience} training steps but was "
                "never updated: it is not in model.parameters(), so an optimizer built from them trains W alone. "
                "Give the optimizer mixup.parameters() too (or train with blo_mixup's bi-level method); freeze it "
                "with mixup.requires_grad_(False) if that is what you want.", stacklevel=2)


def _refuse_unmerged_save(*args, **kwargs):
    raise UserError(
        "this model has a weight mixup attached: its saved weights would be W and W0 under parametrization "
        "keys that plain transformers loads as freshly initialised layers; call blo_mixup.merge_weight_mixup(model) "
        "first (it bakes W_eff into ordinary weights), then save_pretrained")


def _mixed_weight_of(module) -> _MixedWeight | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for parametrization in module.parametrizations.weight:
        if isinstance(parametrization, _MixedWeight):
            return parametrization
    return None


def is_mixed(model: nn.Module) -> bool:
    """True when some weight of the model goes through a weight mixup."""
    return any(_mixed_weight_of(module) is not None for module in model.modules())


def attach_weight_mixup(model: nn.Module, config: MixupConfig | None = None) -> WeightMixup:
    """Mix the targeted weights of `model` in place and return the module owning the attention.

    W stays the model's own Parameter (same object, so optimizers built before still hold it), W0 is
    a frozen copy stored as a buffer, and the forward signature is untouched. Modules that share one
    weight Parameter share one W0 and one attention, so all of them see the same W_eff.
    """
    config = config or MixupConfig()
    if is_mixed(model):
        raise UserError("the model already has a weight mixup; call merge_weight_mixup(model) first")
    names = target_module_names(model, config)
    if not names:
        what = "the target_modules patterns" if config.target_modules else "the default targets"
        raise UserError(
            f"{what} matched no nn.Linear or Conv1D module of {type(model).__name__}; "
            "pass target_modules=[regex, ...] naming the layers to mix"
        )

    # Group the chosen modules by weight: tied weights get a single attention.
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(id(model.get_submodule(name).weight), []).append(name)
    owners = _weight_owners(model)
    for weight_id, group in groups.items():
        outsiders = sorted(set(owners[weight_id]) - {_full_name(name, "weight") for name in group})
        if outsiders:
            raise UserError(
                f"the weight of '{group[0]}' is shared with {', '.join(outsiders)}, which would not "
                "be mixed; exclude that module (exclude_modules) or target both"
            )

    if config.granularity == "rank":  # checked on every matrix before any is changed
        smallest = min(groups.values(), key=lambda group: min(model.get_submodule(group[0]).weight.shape))
        shape = tuple(model.get_submodule(smallest[0]).weight.shape)
        if config.rank > min(shape):
            raise UserError(
                f"mixup rank {config.rank} exceeds the smallest mixed weight matrix, '{smallest[0]}' of shape "
                f"{shape[0]} x {shape[1]}; choose a rank of at most {min(shape)} (--mixup-rank {min(shape)} or less)"
            )

    attentions, module_names = {}, {}
    for group in groups.values():
        first = model.get_submodule(group[0])
        weight = first.weight
        transposed = not isinstance(first, nn.Linear)  # Conv1D stores (in, out)
        in_features, out_features = weight.shape if transposed else weight.shape[::-1]
        attention = _Attention(
            config, out_features, in_features, transposed, weight.device, weight.dtype
        )
        mixed_weight = _MixedWeight(weight.detach().clone(), attention)
        for name in group:
            # unsafe=True: skip the forward-consistency check, which would cost one W_eff per module.
            parametrize.register_parametrization(
                model.get_submodule(name), "weight", mixed_weight, unsafe=True
            )
        key = group[0].replace(".", "-") or "<root>"
        attentions[key] = attention
        module_names[key] = list(group)
    mixup = WeightMixup(model, config, attentions, module_names)
    # The two guards live on the model instance until merge_weight_mixup removes them.
    model.__dict__["_blo_mixup_watch"] = model.register_forward_pre_hook(_AttentionWatch(mixup))
    if hasattr(model, "save_pretrained"):
        model.__dict__["save_pretrained"] = _refuse_unmerged_save
    return mixup


@torch.no_grad()
def merge_weight_mixup(model: nn.Module) -> nn.Module:
    """Bake W_eff into plain weights and remove every trace of the mixup; returns the model.

    The weight Parameters keep their identity (their values become W_eff); W0 buffers and
    parametrizations disappear, so the model saves and loads as an ordinary transformers model.
    Accepts the model or its WeightMixup.
    """
    if isinstance(model, WeightMixup):
        model = model.model
    # One W_eff per parametrization: tied modules share one, and it must be computed before the
    # shared Parameter is overwritten.
    users: dict[int, list[nn.Module]] = {}
    mixed: dict[int, tuple[_MixedWeight, torch.Tensor]] = {}
    for module in model.modules():
        mixed_weight = _mixed_weight_of(module)
        if mixed_weight is None:
            continue
        if len(module.parametrizations.weight) != 1:
            raise UserError(
                f"{type(module).__name__} has other parametrizations on its weight besides the "
                "mixup; remove them before merging"
            )
        if id(mixed_weight) not in mixed:
            mixed[id(mixed_weight)] = (mixed_weight, module.weight.detach().clone())
        users.setdefault(id(mixed_weight), []).append(module)
    for key, modules in users.items():
        _, effective = mixed[key]
        for module in modules:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        modules[0].weight.copy_(effective)  # the same Parameter for every user of a tied weight
    watch = model.__dict__.pop("_blo_mixup_watch", None)
    if watch is not None:
        watch.remove()
    model.__dict__.pop("save_pretrained", None)  # the class's own save_pretrained again
    return model
