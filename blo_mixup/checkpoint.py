"""Checkpoints, so that a killed run continues with --resume and ends with the same numbers.

A run's training is a fixed sequence of stages (the shared loop; or phase 1 and phase 2 of the core
method; one stage per fold). Each stage writes `checkpoints/stage<k>.pt` every --save-steps steps and
once more when it ends, each time atomically (temporary file + rename). On --resume a finished stage
is not re-run: its final state is loaded (weights, the method's state, the random generators) and its
statistics returned; the unfinished stage continues from its last save. Work between stages is
simply redone: it depends only on that state, so it gives the same values.

What a save holds: the model's and the method's state, optimizer and scheduler states, every random
generator (torch, CUDA, Python, NumPy), the data loaders' positions, the step and the losses so far.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import signal
import sys
import threading
from contextlib import contextmanager

import numpy as np
import torch

from .distributed import barrier, is_main_process, world_size
from .errors import Stopped, UserError
from .logs import current
from .runs import CHECKPOINTS, temporary_beside

RUN_FILE = "run.json"
# Options that may differ between the killed run and its resumption: they do not change the numbers.
MAY_CHANGE_ON_RESUME = ("resume", "overwrite", "save_steps", "skip_nonfinite", "output_dir", "report_to")


def changed_options(saved: dict, now: dict) -> str:
    """'lr: 0.0001 then, 0.0002 now, ...' for the options (outside MAY_CHANGE_ON_RESUME) whose values differ
    between a recorded run and now; '' when none. An option added to blo-mixup after the record was written
    is fine at its default."""
    from .config import RENAMED, RunConfig

    if isinstance(saved.get("method_options"), dict):  # a run recorded before an option was renamed
        saved = {**saved, "method_options": {RENAMED.get(k, k): v for k, v in saved["method_options"].items()}}
    saved, now = (json.loads(json.dumps({k: v for k, v in values.items() if k not in MAY_CHANGE_ON_RESUME}, default=str))
                  for values in (saved, now))
    defaults = dataclasses.asdict(RunConfig())
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)
                     and not (k not in saved and now.get(k) == defaults.get(k, object())))
    return ", ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in changed[:4])


class ResumableLoader:
    """A DataLoader whose place in the data can be saved and restored exactly.

    The shuffled order of an epoch comes from the loader's own generator. The state is that generator
    at the start of the current epoch plus the number of batches already handed out; restoring it
    replays the same draws and skips those batches, so the batches that follow are the very ones an
    uninterrupted run would have seen.
    """

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        self.epoch_start = None
        self.position = 0
        self._skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        generator = self.loader.generator
        self.epoch_start = generator.get_state() if generator is not None else None
        skip, self._skip, self.position = self._skip, 0, 0
        for batch in self.loader:
            self.position += 1
            if self.position > skip:
                yield batch

    def state_dict(self) -> dict:
        return {"epoch_start": self.epoch_start, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["epoch_start"] is not None:
            self.loader.generator.set_state(state["epoch_start"])
        self._skip = state["position"]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states() -> list[dict]:
    """Every process's generators (rank order): with several processes they differ (dropout on
    slices of different sizes), so a checkpoint keeps each one's."""
    import torch.distributed as dist

    from .distributed import world_size

    if world_size() == 1:
        return [rng_state()]
    states = [None] * world_size()
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng(saved: list[dict]) -> None:
    """This process's generators from a checkpoint written by the same number of processes."""
    import torch.distributed as dist

    from .distributed import world_size

    if isinstance(saved, dict):  # written before checkpoints kept one entry per process
        saved = [saved]
    if len(saved) != world_size():
        raise UserError(f"the checkpoint was written by {len(saved)} process(es), this run has {world_size()}; "
                        "resume with the same number of processes (torchrun --nproc_per_node)")
    set_rng_state(saved[dist.get_rank() if world_size() > 1 else 0])


def save_atomic(obj: Any, path: Path) -> None:
    fd, tmp = temporary_beside(path)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Stage:
    """One stage's checkpoint file. `state` is what --resume found there (None: start the stage)."""

    path: Path
    name: str
    save_steps: int
    state: dict | None = None
    last_step: int | None = None  # the step of the last save, for error messages
    enabled: bool = True

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.get("finished", False)

    def due(self, step: int) -> bool:
        return self.enabled and (stop_requested() or self.save_steps > 0 and step % self.save_steps == 0)

    def save(self, step: int, **state) -> None:
        """Written by the main process (every process holds the same weights, optimizer states and data
        position), with every process's random generators; the others wait until it is on disk."""
        if not self.enabled:
            return
        rng = all_rng_states()
        if is_main_process():
            save_atomic({"name": self.name, "step": step, "finished": False, "rng": rng, **state,
                         "log_history": current().history}, self.path)
        barrier()
        self.last_step = step
        self._stop_if_requested(f"at step {step} of '{self.name}'")

    def finish(self, model, method, stats: dict) -> None:
        """The stage's end state: what later stages start from, without optimizer or data state."""
        if not self.enabled:
            return
        rng = all_rng_states()
        if is_main_process():
            save_atomic({"name": self.name, "finished": True, "model": model.state_dict(), "method": method.state_dict(),
                         "rng": rng, "stats": stats, "log_history": current().history}, self.path)
        barrier()
        self.last_step = None
        self._stop_if_requested(f"at the end of '{self.name}'")

    def _stop_if_requested(self, where: str) -> None:
        if stop_requested():
            raise Stopped(_stop["signal"], f"{where}; saved {self.path}")

    def restore_finished(self, model, method) -> dict:
        """Load the end state of a stage finished before the kill; returns its statistics."""
        method.load_state_dict(self.state["method"])  # first: it may reshape buffers of the model
        model.load_state_dict(self.state["model"])
        restore_rng(self.state["rng"])
        return self.state["stats"]


@dataclass
class Checkpointer:
    """Hands each training stage, in order, its checkpoint file under `output_dir/checkpoints`."""

    folder: Path
    save_steps: int = 50
    resume: bool = False
    stages: list = field(default_factory=list)

    @classmethod
    def for_run(cls, output_dir: Path, run_values: dict, *, save_steps: int, resume: bool) -> "Checkpointer":
        """Checks that a resumed run has the killed run's options, and records them for a later resume."""
        folder = Path(output_dir) / CHECKPOINTS
        run_file = folder / RUN_FILE
        compared = {k: v for k, v in run_values.items() if k not in MAY_CHANGE_ON_RESUME}
        if resume and run_file.is_file():
            changed = changed_options(json.loads(run_file.read_text()), compared)
            if changed:
                raise UserError(f"--resume needs the options of the run it continues; these differ ({changed}); "
                                f"give the same options, or start over with --overwrite")
        else:
            barrier()  # every process has looked at the folder before the main one clears it
            if is_main_process():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                run_file.write_text(json.dumps(compared, indent=1, sort_keys=True, default=str))
        barrier()
        return cls(folder, save_steps, resume)

    def stage(self, name: str) -> Stage:
        path = self.folder / f"stage{len(self.stages)}.pt"
        state = None
        if self.resume and path.is_file():
            state = torch.load(path, weights_only=False)
            if state["name"] != name:
                raise UserError(f"{path} belongs to stage '{state['name']}', not '{name}'; start over with --overwrite")
            if "log_history" in state:  # the loss history up to the save, so results.json matches an unkilled run
                current().history = copy.deepcopy(state["log_history"])
        stage = Stage(path, name, self.save_steps, state)
        self.stages.append(stage)
        return stage

    def last_good(self) -> str:
        """Where the last save is, for the message when training stops on a NaN."""
        for stage in reversed(self.stages):
            if stage.last_step is not None:
                return f"{stage.path} (stage '{stage.name}', step {stage.last_step})"
            if stage.path.is_file():
                return f"{stage.path} (end of stage '{stage.name}')"
        return "none yet (no step reached --save-steps)"

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_stop = {"signal": None}


def stop_requested() -> bool:
    return _stop["signal"] is not None


def _request_stop(signum, frame) -> None:
    if stop_requested() and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop at once
    _stop["signal"] = signum
    print(f"\nblo-mixup: {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
          "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)


@contextmanager
def stop_at_next_step(stage: Stage | None):
    """Inside a training loop that saves through `stage`: SIGINT or SIGTERM let the current step end,
    save a checkpoint and raise Stopped, so that an interrupted (or preempted) run loses nothing.

    Elsewhere, with saving off, or with several processes (which would have to agree on the step;
    they keep their periodic saves), signals act as they always do.
    """
    if stage is None or not stage.enabled or world_size() > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop["signal"] = None
    previous = {s: signal.signal(s, _request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stage_for(ctx, name: str) -> Stage:
    """The next stage of ctx's run; a stage that saves nothing when the run has no checkpointer."""
    checkpointer = getattr(ctx, "checkpoints", None)
    if checkpointer is None:
        return Stage(Path(os.devnull), name, 0, enabled=False)
    return checkpointer.stage(name)
