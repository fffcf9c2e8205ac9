"""A Ray cluster over one allocation's nodes with the Ray Tune driver run against it."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from structgen.config import load_config
from structgen.launch.hosts import job_port, slurm_hosts
from structgen.launch.ray_nodes import AGENT_PORT_OF_ITS_OWN, cluster_temp_dir, start_node, stop_node, wait_for_nodes
from structgen.launch.slurm.stage_job import job_id

TUNE_DRIVER = "structgen.launch.tune_main"        # run with python -m: works installed, not only from a checkout


@dataclass
class RayTuneJob:
    """A Ray cluster over the allocation's nodes (head on the first, workers through srun), the
    Tune driver run against it, then everything stopped. Runs once, in the batch step."""
    config: str | None
    overrides: list[str]
    sweep: str
    name: str | None = None
    cpus_per_node: int = 1
    gpus_per_node: int = 0
    driver: str = TUNE_DRIVER
    start_timeout_s: int = 180

    def resolved_config(self, name: str) -> Path:
        """The driver takes one config file: this job writes the config plus its --set overrides there."""
        runs_dir = load_config(self.config, self.overrides).run.runs_dir
        return Path(runs_dir) / "slurm-configs" / f"{name}.yml"

    def driver_command(self, address: str, name: str) -> list[str]:
        return [sys.executable, "-m", self.driver, "--config", str(self.resolved_config(name)), "--sweep", self.sweep,
                "--address", address, "--name", name]

    def describe(self) -> str:
        name = self.name or "tune-slurm-$SLURM_JOB_ID"
        sets = " ".join(f"--set {s}" for s in self.overrides)
        return (f"ray start --head on the first node, ray start --address on the others (srun --overlap); then "
                f"{' '.join(self.driver_command('<head>:<port>', name))}\n"
                f"  (that config file is written by the job: {self.config} {sets})")

    def __call__(self) -> dict:
        from structgen.config import save_config

        jid = job_id()
        name = self.name or f"tune-slurm-{jid}"
        resolved = self.resolved_config(name)
        resolved.parent.mkdir(parents=True, exist_ok=True)
        save_config(load_config(self.config, self.overrides), resolved,
                    header=f"config of the Ray Tune sweep {name} ({self.sweep}), written by the SLURM job {jid}")
        in_slurm = "SLURM_JOB_NODELIST" in os.environ
        hosts = slurm_hosts(os.environ["SLURM_JOB_NODELIST"]) if in_slurm else ["127.0.0.1"]
        head, head_ip = hosts[0], _ip_of(hosts[0])
        address = f"{head_ip}:{ray_port_for_job(jid)}"
        ray = str(Path(sys.executable).with_name("ray"))
        temp_dir = cluster_temp_dir(f"structgen-{jid}")       # not /tmp/ray, which other jobs' Ray share
        node = [f"--num-cpus={self.cpus_per_node}", f"--num-gpus={self.gpus_per_node}", "--disable-usage-stats",
                f"--temp-dir={temp_dir}", AGENT_PORT_OF_ITS_OWN, "--block"]
        srun = ["srun", "--overlap", "--ntasks-per-node=1", f"--cpus-per-task={self.cpus_per_node}",
                *([f"--gres=gpu:{self.gpus_per_node}"] if self.gpus_per_node else [])]
        head_cmd = [ray, "start", "--head", f"--port={address.rsplit(':', 1)[1]}", f"--node-ip-address={head_ip}",
                    "--include-dashboard=false", *node]
        steps = []
        try:
            steps.append(start_node([*srun, "-N1", "-n1", f"--nodelist={head}", *head_cmd] if in_slurm else head_cmd))
            wait_for_nodes(ray, address, 1, self.start_timeout_s, steps)
            if len(hosts) > 1:
                k = len(hosts) - 1
                steps.append(start_node([*srun, f"-N{k}", f"-n{k}", f"--exclude={head}", ray, "start",
                                     f"--address={address}", *node]))
                wait_for_nodes(ray, address, len(hosts), self.start_timeout_s, steps)
            command = self.driver_command(address, name)
            rc = subprocess.run(command, env={**os.environ, "RAY_ADDRESS": address}).returncode
        finally:
            for step in reversed(steps):
                stop_node(step)
        if rc != 0:
            raise RuntimeError(f"the Tune driver exited with status {rc}: {' '.join(command)}")
        return {"stage": "tune", "name": name, "address": address, "nodes": hosts, "job_id": jid,
                "config": str(resolved), "ray_temp_dir": temp_dir}


def ray_port_for_job(jid: str) -> int:
    """The head's GCS port: below Linux's ephemeral ports and above Ray's default worker ports
    (10002-19999) and this job's DDP rendezvous range."""
    return job_port(jid, 30000, 2000)


def _ip_of(host: str) -> str:
    import socket

    try:
        return socket.gethostbyname(host)
    except OSError as err:
        raise RuntimeError(f"cannot resolve the Ray head node {host!r}: {err}") from None
