"""Data-parallel training on several processes (`--strategy distributed`, launched by torchrun).

Every process sees the same global batches, in the same order as a single-process run (same loader,
same seed), and keeps its own slice of each (ShardedLoader). Gradients are averaged over processes,
each weighted by its share of the global batch, so that an update is the update of the whole global
batch. In the bi-level phase (Betty's "distributed" strategy) the upper problem's vectors are
averaged too, before and after each hypergradient hop, which makes DARTS and SAMA hypergradients
those of the global batch; Neumann and CG use each process's own Hessian inside their iterations.

Why not torch's DistributedDataParallel, which Betty's strategy would wrap each module in: its
reducer averages gradients only inside `.backward()` of a forward through the wrapper, while a
hypergradient runs several forwards and `torch.autograd.grad` per step, and the attention's gradient
reaches it through the task model's forward, never its own. Explicit all-reduces (one flat buffer
per call) give the same averages with none of those preconditions. Process group, ranks and the
periodic parameter broadcast are Betty's / torch's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError

SHARE = "batch_share"  # batch key: this process's fraction of the global batch


@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: str | None) -> tuple[Processes, torch.device]:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); returns ranks and device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UserError("--strategy distributed needs several processes: launch with "
                        "torchrun --nproc_per_node N $(which blo-mixup) finetune ... --strategy distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    processes = Processes(dist.get_rank(), dist.get_world_size(), local_rank)
    return processes, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def stop() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that shows progress and writes outputs."""
    return world_size() == 1 or dist.get_rank() == 0


class ShardedLoader:
    """Yields this process's slice of each global batch of `loader`, with its share under SHARE.

    The loader (a checkpoint.ResumableLoader or DataLoader) makes the global batches, padded to the
    global batch's longest example, so every slice is computed exactly as in one process. A process
    whose slice would be empty (a last batch smaller than the process count) gets one example with
    share 0: it takes part in the collective calls and adds nothing.
    """

    def __init__(self, loader, rank: int, world: int):
        self.loader, self.rank, self.world = loader, rank, world

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            size = len(batch["labels"])
            rows = torch.arange(size).tensor_split(self.world)[self.rank]
            share = len(rows) / size
            if len(rows) == 0:
                rows = torch.arange(1)
            yield {**{k: v[rows] if torch.is_tensor(v) else v for k, v in batch.items()}, SHARE: share}

    def set_epoch(self, epoch: int) -> None:
        """Betty calls this each epoch; the order already moves on with the loader's own generator."""

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def share_of(batch) -> float:
    return batch.get(SHARE, 1.0) if isinstance(batch, dict) else 1.0


def all_reduce_weighted(tensors: list, share: float) -> list:
    """sum over processes of share * tensor, for every tensor, in one all-reduce of a flat buffer."""
    if world_size() == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors]).mul_(share)
    dist.all_reduce(flat)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def average_gradients(params, share: float, loss: torch.Tensor) -> torch.Tensor:
    """Replace each .grad by the global batch's gradient; returns the global batch's loss.

    A NaN anywhere becomes a NaN everywhere, so every process takes the same skip-or-stop decision.
    """
    params = list(params)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    reduced = all_reduce_weighted([*grads, loss.detach().reshape(1)], share)
    for p, g in zip(params, reduced):
        p.grad = g
    return reduced[-1].reshape(())
