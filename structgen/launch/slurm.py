"""structgen on SLURM through submitit: one job per stage, a job array per sweep, or a Ray
cluster inside one allocation; self-requeue on preemption and time limits; status and logs.

    sub = plan_submission("tree", "configs/digits.yml", ["run.seed=1"], flags={"partition": "gpu"})
    print(sub.describe())              # what --dry-run prints
    jobs = sub.submit()                # submitit Jobs; jobs[0].result() -> {"run_dir": ..., ...}

A stage job is a `StageJob` (a submitit Checkpointable): on USR2 (the time-limit signal, or
`scancel --signal=USR2` on preemption) submitit calls `checkpoint()`, which returns the same job
with ``resume=True``, and requeues it. The training has already written
<run_dir>/checkpoints/last.pt atomically at the last epoch end, and the run folder is a pure
function of the job (runs/<dataset>/<name or slurm-<job id>>), so the requeued job finds that
checkpoint and continues. A job requeued by SLURM itself (`scontrol requeue`, node failure)
resumes the same way: SLURM_RESTART_COUNT tells it that it ran before.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from structgen.config import ConfigError, load_config
from structgen.runs import RunError, checkpoint_of

REPO = Path(__file__).resolve().parents[2]
STAGES = ("tree", "ddpm", "generate")
GENERATE_MODES = ("vae_samples", "vae_recons")
ENV_PREFIX = "STRUCTGEN_SLURM_"
ENV_KEYS = ("partition", "account", "qos", "folder")         # the settings that may come from the environment
TUNE_DRIVER = REPO / "ray_jobs" / "tune.py"


# ---------------------------------------------------------------- resources and executor

@dataclass
class Resources:
    """The SLURM request: the config's slurm section, overridden by env, overridden by flags."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 8
    timeout_min: int = 60
    folder: str = "slurm_logs/%j"
    signal_delay_s: int = 120
    max_timeouts: int = 3
    setup: list[str] = field(default_factory=list)

    @property
    def tasks_per_node(self) -> int:
        """One DDP rank per GPU; one per node on CPU (its threads use the task's CPUs)."""
        return self.gpus_per_node or 1


def resolve_resources(slurm_cfg, flags: dict | None = None, env=None) -> Resources:
    """Precedence: flag (not None) > STRUCTGEN_SLURM_<KEY> > config."""
    env = os.environ if env is None else env
    values = dataclasses.asdict(slurm_cfg)
    for key in ENV_KEYS:
        if env.get(ENV_PREFIX + key.upper()):
            values[key] = env[ENV_PREFIX + key.upper()]
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(Resources)}
    if unknown:
        raise ConfigError(f"slurm: unknown resource setting(s) {', '.join(sorted(unknown))}")
    return Resources(**values)


def executor_parameters(res: Resources, *, name: str, local: bool, single_process: bool = False,
                        array_parallelism: int | None = None) -> dict[str, Any]:
    """AutoExecutor.update_parameters arguments. ``single_process``: run the job function once,
    in the batch step, instead of once per task (the Ray launcher starts its own steps)."""
    params: dict[str, Any] = {"name": name, "timeout_min": res.timeout_min, "nodes": res.nodes,
                              "cpus_per_task": res.cpus_per_task, "mem_gb": res.mem_gb,
                              "tasks_per_node": 1 if single_process else res.tasks_per_node}
    if res.gpus_per_node:              # no --gpus-per-node=0: clusters without GPU gres reject it
        params["gpus_per_node"] = res.gpus_per_node
    if local:
        return params
    params.update({f"slurm_{k}": getattr(res, k) for k in ("partition", "account", "qos") if getattr(res, k)})
    params["slurm_signal_delay_s"] = res.signal_delay_s
    # --requeue: SLURM may requeue the job itself (node failure, preemption) even where the
    # cluster's default forbids it; the job resumes either way.
    params["slurm_additional_parameters"] = {"requeue": True}
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    if single_process:
        params["slurm_use_srun"] = False
    if array_parallelism:
        params["slurm_array_parallelism"] = array_parallelism
    return params


def log_folder(res: Resources) -> str:
    """Absolute, so that --logs and the job agree whatever folder the job runs in."""
    return str(Path(res.folder).expanduser().absolute())


def build_executor(folder: str, parameters: dict, *, local: bool, max_timeouts: int = 3):
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if local else "slurm",
                                     **{f"{'local' if local else 'slurm'}_max_num_timeout": max_timeouts})
    executor.update_parameters(**parameters)
    return executor


# ---------------------------------------------------------------- inside a job

def job_id() -> str:
    """This job's id, stable across requeues: "123", "123_4" for an array task, the local pid."""
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:                       # called outside submitit (e.g. by hand in an salloc)
        return os.environ.get("SLURM_JOB_ID") or f"local-{os.getpid()}"


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _use_task_cpus(cfg) -> None:
    """torch's default thread count is the node's core count: too many with several tasks per node."""
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cfg.run.threads and cpus:
        torch.set_num_threads(int(cpus))


@dataclass
class StageJob(Checkpointable):
    """One structgen stage as a submitit job function; picklable, requeue-safe."""
    stage: str
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    name: str | None = None                    # run folder name; None = slurm-<job id>
    resume: bool = False
    evaluate: bool = True
    vae: str | None = None                     # ddpm: the TreeVAE run (else diffusion.vae_run)
    run: str | None = None                     # generate: the run folder
    mode: str = "vae_samples"
    n: int | None = None

    def describe(self) -> str:
        sets = " ".join(f"--set {s}" for s in self.overrides)
        if self.stage == "generate":
            return f"structgen generate {self.run} --mode {self.mode}" \
                   + (f" --n {self.n}" if self.n else "") + (f" {sets}" if sets else "")
        command = "train-tree" if self.stage == "tree" else "train-ddpm"
        notes = [f"run folder <runs_dir>/<dataset>/{self.name or 'slurm-$SLURM_JOB_ID'}", "DDP over the job's tasks"]
        notes += ["resume"] if self.resume else []
        notes += [f"--vae {self.vae}"] if self.vae else []
        return f"structgen {command} --config {self.config or '(schema defaults)'} {sets} ({'; '.join(notes)})"

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """submitit calls this on USR2: requeue the same job, told to resume. The training state
        itself is <run_dir>/checkpoints/last.pt, written atomically at every epoch end."""
        return DelayedSubmission(dataclasses.replace(self, resume=True))

    def __call__(self) -> dict | None:
        from structgen.launch.distributed import close_distributed, init_distributed

        cfg = load_config(self.config, self.overrides)
        _use_task_cpus(cfg)
        ctx = init_distributed(cfg.run.device)
        try:
            if self.stage == "generate":
                return self._generate() if ctx.is_main else None
            return self._train(cfg, ctx)
        finally:
            close_distributed()

    def _run_dir(self, cfg, jid: str) -> Path:
        return Path(cfg.run.runs_dir) / cfg.data.dataset / (self.name or f"slurm-{jid}")

    def _should_resume(self, run_dir: Path) -> bool:
        """Rank 0's decision; a fresh named run never overwrites an existing one."""
        last = run_dir / "checkpoints" / "last.pt"
        restarted = self.resume or restart_count() > 0
        if last.exists():
            if restarted or self.name is None:   # slurm-<id> can only hold this job's own checkpoint
                return True
            raise RunError(f"{run_dir} already holds a run (checkpoints/last.pt); submit with --resume to "
                           f"continue it, or choose another --name (nothing was overwritten)")
        if restarted:
            # An earlier attempt died before its first checkpoint: its partial log is not a run.
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return False

    def _train(self, cfg, ctx) -> dict | None:
        jid = job_id()
        run_dir = self._run_dir(cfg, jid).absolute()
        decision = None
        if ctx.is_main:
            try:
                decision = self._should_resume(run_dir)
            except RunError as err:                 # every rank must stop, not wait for rank 0
                decision = err
        resume = ctx.broadcast_object(decision)
        if isinstance(resume, RunError):
            raise resume
        if self.stage == "tree":
            from structgen.api import train_tree

            _, report = train_tree(cfg, ctx=ctx, run_dir=run_dir, evaluate=self.evaluate,
                                   resume_checkpoint=run_dir / "checkpoints" / "last.pt" if resume else None)
        elif self.stage == "ddpm":
            from structgen.config import apply_overrides
            from structgen.diffusion.api import train_ddpm

            # train_ddpm names its folder after run.name: give it the job's deterministic name.
            cfg = apply_overrides(cfg, {"run.name": run_dir.name, "run.runs_dir": str(run_dir.parent.parent)})
            train_ddpm(cfg, vae_run=self.vae, resume=run_dir if resume else False, ctx=ctx)
            report = None
        else:
            raise ConfigError(f"stage {self.stage!r}: expected one of {', '.join(STAGES)}")
        if not ctx.is_main:
            return None
        return {"stage": self.stage, "run_dir": str(run_dir), "job_id": jid, "resumed": bool(resume),
                "restarts": restart_count(), "world_size": ctx.world_size, "report": report}

    def _generate(self) -> dict:
        from structgen.api import generate

        paths = generate(self.run, self.mode, self.n, self.overrides)
        return {"stage": "generate", "run_dir": self.run, "job_id": job_id(), "paths": [str(p) for p in paths]}


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
    driver: str = str(TUNE_DRIVER)
    start_timeout_s: int = 180

    def resolved_config(self, name: str) -> Path:
        """The driver takes one config file: this job writes the config plus its --set overrides there."""
        runs_dir = load_config(self.config, self.overrides).run.runs_dir
        return Path(runs_dir) / "slurm-configs" / f"{name}.yml"

    def driver_command(self, address: str, name: str) -> list[str]:
        return [sys.executable, self.driver, "--config", str(self.resolved_config(name)), "--sweep", self.sweep,
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
        hosts = (subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], check=True,
                                capture_output=True, text=True).stdout.split() if in_slurm else ["127.0.0.1"])
        head, head_ip = hosts[0], _ip_of(hosts[0])
        address = f"{head_ip}:{ray_port_for_job(jid)}"
        ray = str(Path(sys.executable).with_name("ray"))
        node = [f"--num-cpus={self.cpus_per_node}", f"--num-gpus={self.gpus_per_node}", "--disable-usage-stats",
                "--block"]
        srun = ["srun", "--overlap", "--ntasks-per-node=1", f"--cpus-per-task={self.cpus_per_node}",
                *([f"--gres=gpu:{self.gpus_per_node}"] if self.gpus_per_node else [])]
        head_cmd = [ray, "start", "--head", f"--port={address.rsplit(':', 1)[1]}", f"--node-ip-address={head_ip}",
                    "--include-dashboard=false", *node]
        steps = []
        try:
            steps.append(_start([*srun, "-N1", "-n1", f"--nodelist={head}", *head_cmd] if in_slurm else head_cmd))
            _wait_for_nodes(ray, address, 1, self.start_timeout_s, steps)
            if len(hosts) > 1:
                k = len(hosts) - 1
                steps.append(_start([*srun, f"-N{k}", f"-n{k}", f"--exclude={head}", ray, "start",
                                     f"--address={address}", *node]))
                _wait_for_nodes(ray, address, len(hosts), self.start_timeout_s, steps)
            command = self.driver_command(address, name)
            rc = subprocess.run(command, env={**os.environ, "RAY_ADDRESS": address}).returncode
        finally:
            for step in reversed(steps):
                _stop(step)
        if rc != 0:
            raise RuntimeError(f"the Tune driver exited with status {rc}: {' '.join(command)}")
        return {"stage": "tune", "name": name, "address": address, "nodes": hosts, "job_id": jid,
                "config": str(resolved)}


def ray_port_for_job(jid: str) -> int:
    """The head's GCS port: below Linux's ephemeral ports and above Ray's default worker ports
    (10002-19999) and this job's DDP rendezvous range."""
    digits = "".join(ch for ch in str(jid) if ch.isdigit()) or "0"
    return 30000 + int(digits) % 2000


def _start(command: list[str]) -> subprocess.Popen:
    # A session of its own: stopping it reaches every Ray process it started and nothing else.
    return subprocess.Popen(command, start_new_session=True)


def _stop(step: subprocess.Popen, grace_s: float = 10) -> None:
    """Stop one `ray start --block` (or the srun running it) and its process group. Not `ray
    stop`: that stops every Ray on the node, other jobs' too. `ray start --block` ignores SIGTERM
    and SIGKILL leaves its children behind, so: TERM, then KILL the whole group. Under SLURM the
    step's remote tasks end with the job, right after this function returns."""
    import signal

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


def _ip_of(host: str) -> str:
    import socket

    try:
        return socket.gethostbyname(host)
    except OSError as err:
        raise RuntimeError(f"cannot resolve the Ray head node {host!r}: {err}") from None


def _wait_for_nodes(ray: str, address: str, want: int, timeout_s: int, steps) -> None:
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


# ---------------------------------------------------------------- plan and submit

@dataclass
class Submission:
    """Everything that would be submitted; `describe()` is the dry run, `submit()` does it."""
    local: bool
    folder: str
    parameters: dict
    jobs: list
    max_timeouts: int = 3
    trials: list[dict] = field(default_factory=list)
    search_space: dict = field(default_factory=dict)      # --ray: what Tune draws its trials from

    def describe(self) -> str:
        kind = "submitit local executor" if self.local else "SLURM (submitit)"
        shape = f"job array of {len(self.jobs)} tasks" if len(self.jobs) > 1 else "one job"
        lines = [f"would submit {shape} to {kind}", f"log folder: {self.folder}", "executor parameters:"]
        lines += [f"  {k} = {v!r}" for k, v in sorted(self.parameters.items())]
        lines += [f"task {i}: {job.describe()}" for i, job in enumerate(self.jobs)]
        if self.trials:
            lines.append(f"trials ({len(self.trials)}; trial i runs as array task i):")
            lines += [f"  trial {i}: " + ", ".join(f"{k}={v!r}" for k, v in trial.items())
                      for i, trial in enumerate(self.trials)]
        if self.search_space:
            lines.append("trials: drawn by Ray Tune from")
            lines += [f"  {k}: {v}" for k, v in self.search_space.items()]
        return "\n".join(lines)

    def submit(self) -> list:
        executor = build_executor(self.folder, self.parameters, local=self.local, max_timeouts=self.max_timeouts)
        if len(self.jobs) == 1:
            return [executor.submit(self.jobs[0])]
        with executor.batch():                  # one sbatch --array
            jobs = [executor.submit(job) for job in self.jobs]
        return jobs


def _absolute_paths(cfg) -> list[str]:
    """Overrides that pin relative folders to the submitting folder (a job may start elsewhere)."""
    pinned = {"run.runs_dir": cfg.run.runs_dir, "data.data_dir": cfg.data.data_dir}
    return [f"{key}={Path(value).expanduser().absolute()}" for key, value in pinned.items()
            if value and not Path(value).is_absolute()]


def plan_submission(stage: str | None, config: str | None, overrides: list[str] | None = None, *,
                    sweep: str | None = None, ray: bool = False, local: bool = False, name: str | None = None,
                    resume: bool = False, evaluate: bool = True, vae: str | None = None, run: str | None = None,
                    mode: str = "vae_samples", n: int | None = None, flags: dict | None = None,
                    env=None) -> Submission:
    """Validate everything (config, sweep, every trial) and describe the jobs; submits nothing."""
    from structgen.sweeps import expand_trials, load_sweep, trial_overrides

    overrides = list(overrides or [])
    config = str(Path(config).absolute()) if config else None
    cfg = load_config(config, overrides)
    res = resolve_resources(cfg.slurm, flags, env)
    folder = log_folder(res)
    name = name or cfg.run.name
    base = overrides + _absolute_paths(cfg)
    if ray and not sweep:
        raise ConfigError("--ray runs a Ray Tune sweep: it needs --sweep SWEEP.yml")
    if not sweep:
        if stage not in STAGES:
            raise ConfigError(f"--stage {stage!r}: expected one of {', '.join(STAGES)}")
        if stage == "generate" and mode not in GENERATE_MODES:
            raise ConfigError(f"--mode {mode!r}: expected one of {', '.join(GENERATE_MODES)}")
        if stage == "generate":
            if not run and not name:
                raise ConfigError("--stage generate needs --run RUN_DIR (or --name / run.name of a run under runs_dir)")
            run = run or str(Path(cfg.run.runs_dir) / cfg.data.dataset / name)
        for given in (run if stage == "generate" else None, vae if stage == "ddpm" else None):
            if given:
                checkpoint_of(given)           # a missing run fails here, not in the queue
        # generate reads the run's own config.yml; the user's --set go there, the pinned folders do not
        job = StageJob(stage, config, overrides if stage == "generate" else base, name=name, resume=resume,
                       evaluate=evaluate, vae=vae, run=str(Path(run).absolute()) if run else None, mode=mode, n=n)
        if stage == "generate":        # one process, one node
            res = dataclasses.replace(res, nodes=1, gpus_per_node=min(res.gpus_per_node, 1))
        params = executor_parameters(res, name=f"structgen-{stage}", local=local)
        return Submission(local, folder, params, [job], res.max_timeouts)
    spec = load_sweep(sweep, cfg)
    if stage and stage != spec.stage:
        raise ConfigError(f"--stage {stage} but the sweep {sweep} is a {spec.stage} sweep")
    trials = expand_trials(spec, cfg.run.seed)
    if ray:
        job = RayTuneJob(config, base, str(Path(sweep).absolute()), name, res.cpus_per_task, res.gpus_per_node)
        params = executor_parameters(res, name="structgen-tune", local=local, single_process=True)
        sub = Submission(local, folder, params, [job], res.max_timeouts)
        sub.search_space = {k: f"{d.kind} {d.values}" for k, d in spec.params.items()}
        sub.search_space["num_samples"] = spec.num_samples
        return sub
    jobs = []
    for i, trial in enumerate(trials):
        sets = base + trial_overrides(trial)
        load_config(config, sets)                # a bad trial fails here, not in the queue
        jobs.append(StageJob(spec.stage, config, sets, name=f"{name}-trial{i:02d}" if name else None,
                             resume=resume, evaluate=evaluate, vae=vae))
    params = executor_parameters(res, name=f"structgen-{spec.stage}-sweep", local=local,
                                 array_parallelism=spec.max_concurrent)
    return Submission(local, folder, params, jobs, res.max_timeouts, trials)


# ---------------------------------------------------------------- status and logs

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
