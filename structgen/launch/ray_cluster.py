"""Starting or joining a Ray cluster with safe defaults.

A cluster this module starts listens on loopback only: its dashboard binds 127.0.0.1, and
Ray's token authentication stays as Ray configures it (on by default since 2.59). Reach the
dashboard from another machine through an SSH tunnel (README).
"""
from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
             extra_pythonpath: list[str] | None = None):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # closed network: no usage pings
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
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
