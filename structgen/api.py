"""The Python API behind the CLI: train, evaluate and generate from a config or a run folder.

    from structgen.api import train_tree
    from structgen.config import load_config
    run_dir, report = train_tree(load_config("configs/digits.yml"))
"""
from __future__ import annotations

import shutil
from pathlib import Path

from structgen.config import Config, ConfigError, load_config, save_config
from structgen.run_lock import claimed
from structgen.runs import checkpoint_of, final_checkpoint, new_run_dir, resume_point, run_config, run_folder
from structgen.runtime.context import setup_torch
from structgen.runtime.resume import RUN_FREE, check_resumable
from structgen.runtime.tree_checkpoint import load_checkpoint, load_model
from structgen.torch_threads import keep_torch_threads

# Keys that may differ between the run being resumed and the command resuming it.
RESUME_FREE = RUN_FREE + ("evaluation.",)


@keep_torch_threads()
def train_tree(cfg: Config, *, resume: bool | str | Path = False, ctx=None, evaluate: bool = True,
               run_dir: str | Path | None = None, resume_checkpoint: str | Path | None = None):
    """Grow, prune and finetune a CNN-TreeVAE; returns (run_dir, evaluation report or None).

    ``resume``: True continues the latest run (or run.name), a path continues that run folder.
    Launchers that manage their own checkpoints (Ray) pass ``run_dir`` and, after a restart,
    ``resume_checkpoint``. Only rank 0 of ``ctx`` writes files.
    """
    from structgen.runtime.context import Context, resolve_device
    from structgen.runtime.metrics_log import MetricsLog
    from structgen.runtime.part_minutes import TITLE, part_minutes, part_table
    from structgen.runtime.progress import Progress
    from structgen.data.run_data import check_batch_fits, load_run_data
    from structgen.train.growth import TreeTrainer

    setup_torch(cfg)
    data = load_run_data(cfg)                       # data problems surface before any folder is made
    check_batch_fits(cfg.training.batch_size // (2 if cfg.training.augment else 1), "training.batch_size", data)
    is_main = ctx is None or ctx.is_main
    run_dir, ckpt_path = resume_point(cfg, "tree", resume=resume, run_dir=run_dir, resume_checkpoint=resume_checkpoint)
    saved = None
    if ckpt_path is not None:
        saved = load_checkpoint(ckpt_path)
        check_resumable(saved["config"], cfg, ckpt_path, free=RESUME_FREE)
    run_dir = run_dir or new_run_dir(cfg)
    ctx = ctx or Context(run_dir=run_dir, device=resolve_device(cfg.run.device))
    ctx.run_dir = run_dir
    progress = Progress(cfg.run.progress, enabled=is_main)
    with claimed(run_dir, fresh=saved is None, enabled=is_main, note=progress.line), \
            MetricsLog(run_dir, enabled=is_main) as log:
        if saved is not None:
            log.truncate(saved["metrics_lines"])
            log.write("resume")                     # the time since the last record was lost to the stop
            growth = saved["growth"]
            progress.line(f"resuming {run_dir} at stage {growth['stage']}" + (
                f", phase {growth['phase']['name']} epoch {growth['phase']['epoch']}" if growth["phase"] else "") + (
                f", a round of {len(growth['round'])} sub-trees, trained again whole" if growth.get("round") else ""))
        elif is_main:
            save_config(cfg, run_dir / "config.yml", header=f"resolved config of run {run_dir}\nre-run: structgen "
                        f"train-tree --config {run_dir / 'config.yml'}")
            progress.line(f"run folder: {run_dir}")
        trainer = TreeTrainer(cfg, ctx, data, log, progress, resume=saved)
        model = trainer.run()
        if is_main:
            shutil.copyfile(trainer.checkpoint_path, final_checkpoint(run_dir))
        report = None
        if evaluate:
            report = evaluate_run(run_dir, cfg=cfg, model=model, data=data, ctx=ctx, log=log)
        if is_main:
            try:
                progress.line(f"{TITLE}:\n" + part_table(part_minutes(run_dir)))
            except (OSError, ValueError, KeyError) as err:  # a summary must not fail a finished run
                progress.line(f"{TITLE}: not available ({err!r})")
    return run_dir, report


# A trained run may be evaluated differently (these keys), or on other data (OTHER_DATA keys,
# whose results go to a folder of their own), but nothing that shaped the trained model changes.
EVALUATION_FREE = ("evaluation.", "data.data_dir", "run.device", "run.threads", "run.progress")
OTHER_DATA = ("data.dataset", "data.num_clusters_data", "data.test_fraction", "data.train_subset", "data.test_subset")


def _evaluation_overrides(overrides, command: str) -> list[tuple[str, str]]:
    """The ``--set`` items of ``command`` that select other data; a ConfigError for any key
    that is neither an evaluation key nor a data selection."""
    from structgen.config.load import parse_override

    other = []
    for item in overrides:
        key, _ = parse_override(item)
        if key in OTHER_DATA:
            other.append((key, item.split("=", 1)[1].strip()))
        elif not key.startswith(EVALUATION_FREE):
            raise ConfigError(f"{command} --set {item}: '{key}' shaped the trained model and cannot change here; "
                              f"allowed: evaluation.*, data.data_dir, run.device, run.threads, run.progress, and "
                              f"the data to evaluate on ({', '.join(OTHER_DATA)})")
    return other


def _other_data_dir(run_dir: Path, other: list[tuple[str, str]]) -> Path:
    """Where an evaluation on other data writes: evaluations/<key-value_...>/ inside the run."""
    import re

    slug = "_".join(f"{key.split('.')[-1]}-{value}" for key, value in other)
    return run_dir / "evaluations" / re.sub(r"[^A-Za-z0-9._-]+", "-", slug)[:100]


@keep_torch_threads()
def evaluate_run(path, *, overrides=(), cfg=None, model=None, data=None, ctx=None, log=None):
    """Evaluate, print the metric table, append to metrics.jsonl, draw the figures.

    Standalone (no ``log``), only evaluation keys may be overridden; overriding the data
    (``--set data.dataset=...``) writes metrics.jsonl and figures to ``evaluations/<...>/``
    instead of the run's own files, which stay untouched."""
    from structgen.run_lock import claimed

    run_dir = run_folder(path)
    if log is not None:                  # called by train_tree, inside its claim of the folder
        return _evaluate_into(run_dir, path, run_dir, cfg=cfg, model=model, data=data, ctx=ctx, log=log)
    other = _evaluation_overrides(overrides, "evaluate")
    if model is None:
        checkpoint_of(path)               # a missing checkpoint is the first thing to report
    cfg = cfg or run_config(run_dir, overrides)
    out_dir = _other_data_dir(run_dir, other) if other else run_dir
    with claimed(run_dir, fresh=False):
        return _evaluate_into(run_dir, path, out_dir, cfg=cfg, model=model, data=data, ctx=ctx, log=None)


def _evaluate_into(run_dir: Path, path, out_dir: Path, *, cfg, model, data, ctx, log):
    from structgen.data.registry import dataset_shape
    from structgen.eval.evaluate import evaluate_model, format_report
    from structgen.eval.run_figures import write_generations, write_run_tree_figure
    from structgen.runtime.context import Context, resolve_device
    from structgen.runtime.metrics_log import MetricsLog
    from structgen.data.run_data import load_run_data

    setup_torch(cfg)
    if model is None:
        model, _ = load_model(path, resolve_device(cfg.run.device))
    shape = dataset_shape(cfg.data.dataset, cfg.data)
    if tuple(shape) != tuple(model.spec.image_shape):
        raise ConfigError(f"data.dataset {cfg.data.dataset!r} has images {tuple(shape)} but the run's TreeVAE "
                          f"takes {tuple(model.spec.image_shape)}")
    data = data or load_run_data(cfg)
    ctx = ctx or Context(run_dir=run_dir, device=next(model.parameters()).device)
    result, test_probs = evaluate_model(model, data, cfg.evaluation, ctx, seed=cfg.run.seed)
    if not ctx.is_main:
        return result
    own_log = log is None
    log = log or MetricsLog(out_dir)
    log.write("evaluation", **result)
    print(format_report(result))
    figures = out_dir / "figures"
    tree_png = write_run_tree_figure(model, figures / "tree.png", data, test_probs.numpy(), result, cfg)
    written = write_generations(model, "vae_recons", figures, 16, cfg.run.seed, test=data.test, device=ctx.device)
    print(f"figures: {tree_png}  and  {written[-2]}")
    if out_dir != run_dir:
        print(f"evaluated on other data: results in {out_dir} (the run's own metrics.jsonl and figures are untouched)")
    if own_log:
        log.close()
    return result


@keep_torch_threads()
def generate(path, mode: str, n: int | None = None, overrides=()):
    """Write per-leaf PNG grids and .npz arrays for ``vae_samples`` or ``vae_recons``."""
    from structgen.data.run_data import load_run_data
    from structgen.eval.run_figures import write_generations

    other = _evaluation_overrides(overrides, "generate")
    model, cfg, device, run_dir = _run_model(path, overrides=overrides)
    test = load_run_data(cfg).test if mode == "vae_recons" else None
    out_dir = _other_data_dir(run_dir, other) if other and mode == "vae_recons" else run_dir
    return write_generations(model, mode, out_dir / "samples", n or cfg.evaluation.n_generate, cfg.run.seed,
                             test=test, device=device)


# ---- your own images: assign every image to a leaf, export the tree ---------------------------
def _run_model(path, device=None, overrides=()):
    """(model, run config, device, run folder) of a trained run, for commands that only read it."""
    from structgen.runtime.context import resolve_device

    run_dir = run_folder(path)
    checkpoint_of(path)                   # a missing checkpoint is the first thing to report
    cfg = run_config(run_dir, overrides)
    setup_torch(cfg)
    device = device or resolve_device(cfg.run.device)
    model, _ = load_model(path, device)
    return model, cfg, device, run_dir


def _image_stream(run_dir, images, dataset, split, overrides, batch_size, on_bad_image, device=None):
    """(model, device, stream of uint8 batches, file names or None) for `assign`/`assign_to_csv`."""
    from structgen.eval.image_stream import open_images

    model, cfg, device, _ = _run_model(run_dir, device)
    source, names = _image_source(cfg, images, dataset, split, overrides)
    return model, device, open_images(source, tuple(model.spec.image_shape), batch_size, on_bad_image), names


def _image_source(run_cfg, images, dataset, split, overrides):
    """A path/array to stream, or a dataset's images (with their file names when known)."""
    if images is not None:
        return images, None
    from dataclasses import asdict

    import numpy as np

    from structgen.data import load_split

    run_data = [f"data.{k}={v}" for k, v in asdict(run_cfg.data).items() if v is not None and k != "fingerprint"]
    cfg = load_config(None, [*run_data, *overrides, *([f"data.dataset={dataset}"] if dataset else [])])
    d, parts, names = cfg.data, [], []
    for s in (("train", "test") if split == "all" else (split,)):
        ds = load_split(d.dataset, s, d.data_dir, seed=run_cfg.run.seed, test_fraction=d.test_fraction, data_cfg=d)
        parts.append(ds.images)
        names += ds.sources if ds.sources is not None else [f"{d.dataset}/{s}#{i}" for i in range(len(ds))]
    if len(parts) == 1:
        return parts[0], names
    # Arrays in memory are joined; .beton-backed parts (dataset beton) stay on disk, streamed in turn.
    return (np.concatenate(parts) if all(isinstance(p, np.ndarray) for p in parts) else parts), names


@keep_torch_threads()
def assign(run_dir, images=None, *, dataset: str | None = None, split: str = "all", overrides=(),
           batch_size: int = 256, latents: bool = False, on_bad_image: str = "error", device=None):
    """Every image's leaf probabilities under a trained run, as a ``structgen.eval.assignments.
    Assignments`` (names, leaves, probs (N, L), latents; ``.leaf`` / ``.leaf_names`` /
    ``.leaf_probability`` per image). ``images``: a folder, an image file, an .npz / idx-ubyte file
    or an array (N x H x W, N x H x W x C or N x C x H x W; uint8 or float in [0,1]); without it,
    ``dataset`` (default: the run's own data; ``overrides`` are ``data.*=value`` items) and its
    ``split`` (train, test or all)."""
    from structgen.eval.assignments import run_assignment

    model, device, stream, names = _image_stream(run_dir, images, dataset, split, overrides, batch_size,
                                                 on_bad_image, device)
    result = run_assignment(model, stream, device, latents=latents)
    if names is not None:
        result.names = list(names)
    return result


@keep_torch_threads()
def assign_to_csv(run_dir, out, images=None, *, dataset: str | None = None, split: str = "all", overrides=(),
                  batch_size: int = 256, top_k: int = 0, latents: bool = False, on_bad_image: str = "error",
                  progress: str = "auto") -> tuple[Path, Path | None, int]:
    """Stream the assignments of ``assign`` into a CSV (and the root latent means into a .npy
    beside it) holding one batch at a time; returns (csv, npy or None, rows)."""
    import numpy as np

    from structgen.eval.assignments import CsvWriter, assign_batch
    from structgen.runtime.progress import Progress

    model, device, stream, names = _image_stream(run_dir, images, dataset, split, overrides, batch_size,
                                                 on_bad_image)
    if names is not None:
        stream.names = list(names)
        stream.batches = ((names[i * batch_size:(i + 1) * batch_size], x) for i, (_, x) in enumerate(stream.batches))
    out = Path(out)
    npy = out.with_suffix(".latents.npy") if latents else None
    writer, rows, z_file = CsvWriter(out, model.tree.leaves(), top_k), 0, None
    bar = Progress(progress, heartbeat_s=5.0).epoch(-(-len(stream) // batch_size), "assign")
    try:
        for batch_names, x in stream.batches:
            probs, z = assign_batch(model, x, device, latents)
            writer.write(batch_names, probs)
            if z is not None:
                if z_file is None:              # a memory-mapped .npy: latents never pile up in RAM
                    z_file = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32,
                                                       shape=(len(stream), z.shape[1]))
                z_file[rows:rows + len(z)] = z
            rows += len(batch_names)
            bar.update(len(batch_names), {})
    finally:
        bar.close()
        writer.close()
    if z_file is not None:
        z_file.flush()
        if rows < len(z_file):                   # skipped files: keep only the rows written
            kept = np.array(z_file[:rows])
            del z_file
            np.save(npy, kept)
    return out, npy, rows


@keep_torch_threads()
def export_tree(run_dir, out_dir=None) -> tuple[Path, Path]:
    """Write ``tree.json`` and ``tree.nwk`` (Newick) of a trained run into ``out_dir`` (default:
    the run folder); masses and class histograms come from its last evaluation."""
    import json

    from structgen.eval.tree_export import export_document
    from structgen.runtime.metrics_log import read_metrics

    model, cfg, _, run = _run_model(run_dir, "cpu")
    leaves = model.tree.leaves()
    evals = [r for r in read_metrics(run) if r.get("event") == "evaluation" and r.get("leaves") == leaves]
    if evals:
        last = evals[-1]
        mass, hist = last["leaf_mass"], last.get("leaf_histograms")
    else:                                   # never evaluated: the mass the tree gives its own test split
        from structgen.runtime.context import Context
        from structgen.runtime.leaf_probabilities import leaf_probabilities
        from structgen.data.run_data import load_run_data

        test = load_run_data(cfg).test
        probs = leaf_probabilities(model, test.images, Context(run_dir=run, device="cpu"), cfg.evaluation.batch_size)
        mass, hist = probs.mean(0).tolist(), None
    grids = {}
    for i, leaf in enumerate(leaves):
        found = {kind: str(p.relative_to(run)) for kind, p in
                 (("vae_samples", run / "samples" / "vae_samples" / f"leaf{i:02d}_{leaf}.png"),
                  ("vae_recons", run / "samples" / "vae_recons" / f"leaf{i:02d}_{leaf}.png"),
                  ("figure_recons", run / "figures" / "vae_recons" / f"leaf{i:02d}_{leaf}.png")) if p.exists()}
        grids[leaf] = found
    class_names = evals[-1].get("class_names") if evals else None
    doc = export_document(model.tree, mass, hist, class_names, grids)
    out_dir = Path(out_dir) if out_dir is not None else run
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tree.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "tree.nwk").write_text(doc["newick"] + "\n")
    return out_dir / "tree.json", out_dir / "tree.nwk"
