"""A submitted job's state (sacct, else squeue) and the tail of its submitit logs."""
from __future__ import annotations

import subprocess
from pathlib import Path

from structgen.runs import RunError


def job_status(job: str) -> str:
    """sacct's view of a job (all array tasks and steps); squeue's when accounting is off."""
    fmt = "JobID%-16,JobName%-28,State%-12,ExitCode,Elapsed,Start,End,NodeList"
    sacct = subprocess.run(["sacct", "-j", str(job), "-o", fmt], capture_output=True, text=True)
    if sacct.returncode == 0 and len(sacct.stdout.strip().splitlines()) > 2:
        return sacct.stdout.rstrip()
    squeue = subprocess.run(["squeue", "-j", str(job)], capture_output=True, text=True)
    if squeue.returncode == 0 and len(squeue.stdout.strip().splitlines()) > 1:
        return squeue.stdout.rstrip()
    raise RunError(f"job {job}: unknown to sacct and squeue ({(sacct.stderr or squeue.stderr).strip() or 'no record'})")


def log_files(job: str, folder_pattern: str) -> list[Path]:
    """submitit's per-task logs of a job ("123", or "123_4" for one array task; "123" of an
    array gives every task's)."""
    import glob

    job = str(job)
    folders = [folder_pattern.replace("%j", job)]
    if "_" not in job and "%j" in folder_pattern:
        folders.append(folder_pattern.replace("%j", f"{job}_*"))
    files = {Path(f) for folder in folders for ext in ("out", "err") for f in glob.glob(f"{folder}/{job}_*_log.{ext}")}
    return sorted(files)


def job_logs(job: str, folder_pattern: str, lines: int = 40) -> str:
    files = log_files(job, folder_pattern)
    if not files:
        raise RunError(f"job {job}: no submitit logs under {folder_pattern.replace('%j', str(job))} (the log folder "
                       f"comes from --folder, STRUCTGEN_SLURM_FOLDER or slurm.folder of --config)")
    out = []
    for path in files:
        text = path.read_text(errors="replace").splitlines()
        out.append(f"==> {path} (last {min(lines, len(text))} of {len(text)} lines) <==")
        out += text[-lines:]
    return "\n".join(out)


def job_result(job):
    """What a submitted job returned: its first task's result. On several nodes that is rank 0's
    (the other DDP ranks return None), or the Ray launcher's, which runs once in the batch step
    and has no other task to wait for. (submitit's ``job.result()`` refuses a job of several
    tasks, and ``job.results()`` would wait for the Ray job's tasks that never run.)"""
    return job.task(0).result() if job.num_tasks > 1 else job.result()
