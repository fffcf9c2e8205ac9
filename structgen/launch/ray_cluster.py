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
    runtime_env = None
    if extra_pythonpath:        # modules the workers must import that are not installed packages
        path = os.pathsep.join([*extra_pythonpath, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if address:
        ray.init(address=address, log_to_driver=not quiet, runtime_env=runtime_env)
    else:
        # "local": always a new cluster; never attach to a stray head found in /tmp/ray.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=not quiet, configure_logging=True, runtime_env=runtime_env)
    return ray
