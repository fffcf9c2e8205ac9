"""Ray nodes as processes this process owns: `ray start --block` in a session of its own, waited
for (its "started" line, or `ray status` listing the nodes), and stopped by process group. Not
`ray stop`: that stops every Ray on the machine, other jobs' and other users' clusters too."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time


READY_LINE = "Ray runtime started"      # what `ray start` prints once its node is up, before --block blocks
# For every `ray start` of ours: the node's dashboard agent takes a free port. By default every
# agent on a machine asks for 52365, and a head whose agent found it taken answers every `ray job
# submit` with "No available agent" for as long as it runs (CI met it with two clusters up).
AGENT_PORT_OF_ITS_OWN = "--dashboard-agent-listen-port=0"


def cluster_temp_dir(name: str | None = None) -> str:
    """A temp dir for one cluster's nodes (`ray start --temp-dir`), instead of the shared /tmp/ray.
    Ray's job supervisor, and any process given the address "auto", read "their" cluster from
    <temp dir>/ray_current_cluster, which every `ray start` under that dir rewrites: clusters
    sharing it capture each other's jobs (seen: a job submitted to one cluster joined another,
    started later on the same machine, and died when that one stopped). Short and under /tmp:
    Ray's socket paths below it must fit in 107 characters. With ``name``, a fixed path (the
    same on every node of a SLURM job; Ray's logs stay there, as under /tmp/ray); without, a
    fresh folder, for the caller to remove."""
    return f"/tmp/ray-{name}" if name else tempfile.mkdtemp(prefix="ray-", dir="/tmp")


def start_node(command: list[str], env: dict | None = None, ready_timeout_s: float | None = None) -> subprocess.Popen:
    """Start a `ray start --block` in a session of its own: stopping that session reaches every Ray
    process it started and nothing else. With ``ready_timeout_s``, return once it says its node
    is up (cheaper than polling `ray status`, which starts a Python each time), its later output
    drained in the background."""
    if ready_timeout_s is None:
        return subprocess.Popen(command, start_new_session=True, env=env)
    node = subprocess.Popen(command, start_new_session=True, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, timer = [], threading.Timer(ready_timeout_s, stop_node, args=(node, 1))
    timer.start()
    try:
        for line in node.stdout:
            seen.append(line)
            if READY_LINE in line:
                threading.Thread(target=node.stdout.read, daemon=True).start()
                return node
    finally:
        timer.cancel()
    raise RuntimeError(f"{' '.join(command[:3])} ... never said {READY_LINE!r} (exit status {node.wait()}):\n"
                       + "".join(seen[-20:]))


def stop_node(step: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop one `ray start --block` (or the srun running it) and its process group.
    `ray start --block` ignores SIGTERM and SIGKILL leaves its children behind, so: TERM, then
    KILL the whole group. Under SLURM the step's remote tasks end with the job, right after this
    function returns."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(step.pid, sig)
        except ProcessLookupError:
            return
        try:
            step.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for_nodes(ray: str, address: str, want: int, timeout_s: int, steps) -> None:
    """Until `ray status` lists ``want`` active nodes, or a start step died, or the time is up."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        dead = [s for s in steps if s.poll() is not None]
        if dead:
            raise RuntimeError(f"a Ray node step exited with status {dead[0].returncode}: {' '.join(dead[0].args)}")
        out = subprocess.run([ray, "status", f"--address={address}"], capture_output=True, text=True).stdout
        active = out.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in out else ""
        if sum("node_" in line for line in active.splitlines()) >= want:
            return
        time.sleep(2)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {want} node(s) in {timeout_s} s")
