"""Starting or joining a Ray cluster with safe defaults.

What a cluster this module starts exposes (Ray 2.60, measured with `ss -ltnp`): the dashboard
and its job API bind 127.0.0.1 only; Ray's core services (GCS, raylets, object manager, worker
gRPC, metrics agents) listen on all interfaces, and no Ray setting confines them to loopback
(`--node-ip-address=127.0.0.1` changes what they advertise, not where they listen). What
protects those ports is Ray's token authentication, on by default since 2.59: every request
without the cluster's token is refused. Never turn it off (RAY_AUTH_MODE=disabled) on a machine
that others can reach; `init_ray` warns when it is off. Reach the dashboard from another machine
through an SSH tunnel (README, "Security and failure model").
"""
from __future__ import annotations

import os
import sys

from structgen.launch.hosts import free_loopback_port


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
             extra_pythonpath: list[str] | None = None):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # closed network: no usage pings
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("structgen: warning: RAY_AUTH_MODE=disabled: Ray's core ports listen on every interface and now "
              "accept requests without a token; use this only on a machine nobody else can reach",
              file=sys.stderr)
    env_vars = {}
    if extra_pythonpath:        # modules the workers must import that are not installed packages
        env_vars["PYTHONPATH"] = os.pathsep.join([*extra_pythonpath, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    # Ray Train's controller asks Ray's state API whether it is alive, and that API finds "the"
    # cluster from RAY_ADDRESS, else from /tmp/ray/ray_current_cluster: the last `ray start` on
    # the machine, which may be stopped (a 12-s stall at the end of every job) or another live
    # cluster (whose answer, "no such actor", makes Train remove a running job's placement
    # group). So every process of this job is told which cluster is its own.
    if address:
        if "://" not in address and address != "auto":
            env_vars["RAY_ADDRESS"] = address
        ray.init(address=address, log_to_driver=not quiet, runtime_env=_env(env_vars))
    else:
        # "local": always a new cluster; never attach to a stray head found in /tmp/ray.
        port = free_loopback_port(preferred=8265)     # Ray's usual dashboard port, the README's URLs
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, log_to_driver=not quiet, configure_logging=True, runtime_env=_env(env_vars))
    return ray


def _env(env_vars: dict) -> dict | None:
    return {"env_vars": env_vars} if env_vars else None
