"""One writer per run folder: a lock file claimed atomically before anything is written.

Checking for files that appear only after the first epoch leaves a window in which two runs
with one name share a folder (mixed metrics, one's checkpoints under the other's config). The
lock closes it for every entry point, since they all train through `train_tree` /
`train_ddpm`: the CLI, torchrun, Ray Train, Ray Tune trials and SLURM array tasks.

The lock file (``<run>/run.lock``, JSON: host, pid, owner token, start time) appears complete
or not at all (written aside, then hard-linked into place, which fails if it exists). A lock
left by a killed process is *stale* and taken over, with a line saying so, when either

- it names this host and its pid no longer runs, or
- it carries this process's owner token: the same SLURM job after a requeue, the same Ray
  Train fit after a worker-group restart, the same torchrun job after an elastic restart
  (those may run on another host, or before the old process has quite gone).

Anything else is a live claim, and the run is refused with its owner named.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

from structgen.runs import RunError

LOCK_NAME = "run.lock"
OWNER_ENV = "STRUCTGEN_RUN_OWNER"     # set by launchers whose restarts are new processes (Ray)


def owner_token() -> str | None:
    """What a restarted process of the same job shares with the one it replaces."""
    if os.environ.get(OWNER_ENV):
        return os.environ[OWNER_ENV]
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":          # torchrun's default id is shared by unrelated jobs
        return f"torchrun:{run_id}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                   # another user's live process
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class RunLock:
    """Held while a process writes a run folder; ``release`` (or leaving ``with``) frees it."""

    def __init__(self, run_dir: Path, note=print):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.note = note
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "owner": owner_token(),
                   "since": time.strftime("%Y-%m-%d %H:%M:%S"), "nonce": uuid.uuid4().hex}
        self.held = False

    def acquire(self) -> "RunLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create the run folder {self.run_dir}: {err.strerror or err}") from None
        for _ in range(5):                    # another process may break or take the lock meanwhile
            if self._link_new():
                self.held = True
                return self
            holder = _read(self.path)
            if holder is None:
                continue                      # released between our attempt and the read
            why = self._stale_because(holder)
            if why is None:
                raise RunError(self._held_message(holder))
            self._break(holder, why)
        raise RunError(f"{self.path}: could not claim the run folder (the lock keeps changing hands)")

    def release(self) -> None:
        if self.held and (_read(self.path) or {}).get("nonce") == self.me["nonce"]:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _link_new(self) -> bool:
        aside = self.run_dir / f".{LOCK_NAME}.{self.me['nonce']}"
        try:
            aside.write_text(json.dumps(self.me))
            os.link(aside, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            raise RunError(f"cannot write in the run folder {self.run_dir}: {err.strerror or err}") from None
        finally:
            aside.unlink(missing_ok=True)

    def _stale_because(self, holder: dict) -> str | None:
        if not holder:
            return None                       # unreadable: never guess, let a person look
        if holder.get("owner") and holder.get("owner") == self.me["owner"]:
            return f"it belongs to this job ({holder['owner']}), which restarted"
        if holder.get("host") == self.me["host"] and not _pid_alive(int(holder.get("pid", -1))):
            return f"its process {holder.get('pid')} on {holder.get('host')} no longer runs"
        return None

    def _break(self, holder: dict, why: str) -> None:
        # Renaming the stale lock away is atomic: of two processes breaking it at once, one
        # renames it and the other finds it gone and tries again from the start.
        try:
            os.rename(self.path, self.run_dir / f".{LOCK_NAME}.stale-{self.me['nonce']}")
        except FileNotFoundError:
            return
        (self.run_dir / f".{LOCK_NAME}.stale-{self.me['nonce']}").unlink(missing_ok=True)
        self.note(f"taking over the stale lock {self.path} (pid {holder.get('pid')} on {holder.get('host')}, "
                  f"since {holder.get('since')}): {why}")

    def _held_message(self, holder: dict) -> str:
        if not holder:
            return (f"{self.run_dir} is locked by {self.path}, which cannot be read; if no run is using this "
                    f"folder, delete that file (nothing was written)")
        return (f"{self.run_dir} is in use by pid {holder.get('pid')} on host {holder.get('host')} since "
                f"{holder.get('since')} (lock {self.path}); wait for it, or choose another run.name. If that "
                f"process is gone, delete the lock file (nothing was written)")


def holds_a_run(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoints").exists() or (Path(run_dir) / "metrics.jsonl").exists()


def claim_run_dir(run_dir: Path, *, fresh: bool, note=print) -> RunLock:
    """Lock ``run_dir`` for this process; a ``fresh`` run also needs the folder to hold no run."""
    lock = RunLock(run_dir, note).acquire()
    if fresh and holds_a_run(run_dir):
        lock.release()
        raise RunError(f"run folder {run_dir} already holds a run; pass --resume to continue it, or choose "
                       f"another run.name (nothing was overwritten)")
    return lock


@contextlib.contextmanager
def claimed(run_dir: Path, *, fresh: bool, enabled: bool = True, note=print):
    """``claim_run_dir`` for the block; ranks other than the main one (``enabled=False``) write
    nothing and claim nothing."""
    if not enabled:
        yield None
        return
    lock = claim_run_dir(run_dir, fresh=fresh, note=note)
    try:
        yield lock
    finally:
        lock.release()
