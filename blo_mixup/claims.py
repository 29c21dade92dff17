"""Claims on the runs of a shared comparison folder: several `compare` processes (--workers, --shard, or
machines on a shared filesystem) run each run exactly once.

Before a run starts, its process creates OUTPUT_DIR/claims/<task>/<row>/seed<k>.json with O_CREAT|O_EXCL,
which only one process can do, and touches it every HEARTBEAT_S seconds while the run goes on. A claim is
stale when its owner stopped beating for `timeout` seconds (killed, machine lost), or at once when the
owner ran on this machine and its process is gone. A stale claim is taken over by the one process that
creates its takeover file (again O_EXCL, named after the stale claim's id), which then puts its own claim
in place; the run then continues from its checkpoints. Clocks of machines that share a folder must agree
to well within the timeout.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HEARTBEAT_S = 30.0
DEFAULT_TIMEOUT_S = 600.0  # a claim whose owner has not beaten for this long is taken over


class Claim:
    """A run held by this process; its heartbeat runs until release()."""

    def __init__(self, path: Path, claim_id: str, heartbeat_s: float = HEARTBEAT_S):
        self.path, self.id = path, claim_id
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True)
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:
                pass  # taken over or removed: release() finds out

    def release(self) -> None:
        """Stop beating and remove the claim (and takeover files of this run), if it is still ours."""
        self._stop.set()
        self._beat.join()
        if _owner(self.path).get("id") == self.id:
            self.path.unlink(missing_ok=True)
        for takeover in self.path.parent.glob(f"{self.path.name}.takeover-*"):
            takeover.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_path(output_dir: Path, task: str, label: str, seed: int) -> Path:
    return Path(output_dir) / "claims" / task / label / f"seed{seed}.json"


def try_claim(path: Path, timeout_s: float = DEFAULT_TIMEOUT_S, heartbeat_s: float = HEARTBEAT_S) -> Claim | None:
    """The run's claim for this process, or None while another live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    claim_id = uuid.uuid4().hex
    record = json.dumps({"id": claim_id, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        stale = _owner(path) if is_stale(path, timeout_s) else None
        if not stale:
            return None
        try:  # one process wins the takeover of this stale claim; a late one finds its file taken
            os.close(os.open(path.with_name(f"{path.name}.takeover-{stale.get('id')}"), os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return None
        if _owner(path).get("id") != stale.get("id"):
            return None  # released or replaced meanwhile
        tmp = path.with_name(f".{path.name}.{claim_id}")
        tmp.write_text(record)
        os.replace(tmp, path)
        return Claim(path, claim_id, heartbeat_s)
    with os.fdopen(fd, "w") as f:
        f.write(record)
    return Claim(path, claim_id, heartbeat_s)


def is_stale(path: Path, timeout_s: float) -> bool:
    """True when the claim's owner is gone: a dead process on this machine, or no heartbeat for timeout_s."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    owner = _owner(path)
    if owner.get("host") == socket.gethostname() and owner.get("pid") and not _alive(owner["pid"]):
        return True
    return age > timeout_s


def holder(path: Path) -> str:
    """Who holds a claim, in words: 'pid 123 on host-a'."""
    owner = _owner(path)
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # gone, or created and not yet written
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
