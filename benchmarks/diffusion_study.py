"""What guidance and each conditioning signal buy the diffusion stage, measured (issue #17).

    # guidance: trained DDPMs (cfg_rate > 0) scored at several guidance weights
    .venv/bin/python benchmarks/diffusion_study.py --ddpm RUN_LEAF RUN_PATH --weights 0 0.5 1 2 4 --seeds 0 1
    # ablation: none / leaf / path trained for the same steps on one TreeVAE, then scored
    .venv/bin/python benchmarks/diffusion_study.py --ablation --vae TREE_RUN [--set KEY=VALUE ...] [--weights 0 2]
    # where sampling starts: pure noise (1) or the leaf's VAE image noised to strength·(T-1)
    .venv/bin/python benchmarks/diffusion_study.py --ddpm RUN_LEAF --strengths 1 0.7 0.5 0.3

Every row is one `score_ddpm` call with one classifier (--classifier; default the dataset's
`--degrade` one, the fair judge of blurry TreeVAE images, trained first when missing): CFD to the
test set, generation purity, agreement (the share of a leaf's images given the class of the test
images that leaf holds), each as the mean and half-range over the sampling --seeds. The TreeVAE's
own row comes from the same root samples. For each seed every run, weight and strength sees the
same root samples and the same noise, so rows differ only in the model, w and the start strength.
Each row also keeps its per-leaf purity (each leaf's mean over seeds in study.json, and printed).
Then, per run, the ε-loss on 1,000 test images with the condition present and dropped, by quarter
of the timestep range: how much the model leans on its condition, and where; with --kept, per run,
w and strength, how often a DDPM image keeps the class of its own VAE image when the condition is a
posterior leaf image (test images: what training shows it) and when it is a prior one (root
samples: what `sample` mode gives it), beside the judge's confidence on those VAE images. Writes in --out:
study.csv (one line per run, w, strength and seed), study.json, guidance.png (purity, agreement
and CFD against w, a line per run and strength), strength.png (the same against the strength, with
more than one) and, with --ablation, compare_ddpm.png (the same root samples through
the three models). Training uses --config (default configs/mnist.yml) with the CPU-sized UNet of
diffusion_quality.py; --set changes any key, e.g. diffusion.epochs or diffusion.cfg_rate.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusion_quality import CPU_DDPM

from structgen.config import load_config
from structgen.ddpm_api import compare_ddpm, score_ddpm, train_ddpm
from structgen.errors import BAD_INPUT
from structgen.runs import run_config
from structgen.scoring.classifier import default_classifier_path, train_classifier

CONDITIONINGS = ("none", "leaf", "path")
MEASURES = ("purity", "agreement", "cfd")


def judge(dataset: str, path: str | None) -> Path:
    """The classifier every row is scored with: --classifier, or the dataset's --degrade one."""
    if path:
        return Path(path)
    default = default_classifier_path(dataset).with_name(f"{dataset}-degrade.pt")
    if not default.exists():
        print(f"training the judging classifier {default} (--degrade) ...", flush=True)
        train_classifier(dataset, out=default, degrade=True)
    return default


def train_ablation(args) -> list[Path]:
    """One DDPM per conditioning on the same TreeVAE, same config, seed and steps."""
    runs = []
    for kind in CONDITIONINGS:
        cfg = load_config(args.config, CPU_DDPM + [f"run.runs_dir={args.runs_dir}", f"diffusion.conditioning={kind}",
                                                   f"run.name={args.name}-{kind}"] + args.overrides)
        start = time.perf_counter()
        runs.append(train_ddpm(cfg, args.vae))
        print(f"trained {kind}: {runs[-1]} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return runs


def score_rows(runs: list[Path], weights: list[float], seeds: list[int], classifier: Path, n: int,
               per_leaf: int, out: Path, strengths: tuple[float, ...] = (1.0,)) -> list[dict]:
    rows = []
    for run in runs:
        for w in weights:
            for strength in strengths:
                for seed in seeds:
                    folder = out / "scores" / f"{Path(run).name}-w{w:g}-s{strength:g}-seed{seed}"
                    scores, written = score_ddpm(run, classifier=classifier, n=n, per_leaf=per_leaf, guidance=w,
                                                 strength=strength, seed=seed, out_dir=folder, floor=False)
                    meta = json.loads(written[0].read_text())                      # scores.json
                    for model in ("vae", "diffusion"):
                        rows.append({"run": Path(run).name, "conditioning": meta["conditioning"], "model": model,
                                     "guidance": w, "strength": strength, "seed": seed, "step": meta["step"],
                                     **{m: scores[model][m] for m in MEASURES},
                                     "leaf_purity": [float(p) for p in scores[model]["leaf_purity"]]})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and half-range over seeds per (run, model, w, strength); the TreeVAE once per run
    (neither w nor the strength touches its images)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["model"] == "vae" and (r["guidance"], r["strength"]) != (rows[0]["guidance"], rows[0]["strength"]):
            continue                                     # the same TreeVAE images at every w and strength
        groups.setdefault((r["run"], r["conditioning"], r["model"], r["guidance"], r["strength"]), []).append(r)
    table = []
    for (run, kind, model, w, strength), members in groups.items():
        diffusion = model == "diffusion"
        line = {"run": run, "conditioning": kind, "model": model, "guidance": w if diffusion else None,
                "strength": strength if diffusion else None, "seeds": len(members)}
        for m in MEASURES:
            values = np.array([r[m] for r in members if r[m] is not None], dtype=np.float64)
            line[m] = float(values.mean()) if len(values) else None
            line[f"{m}_spread"] = float(np.ptp(values) / 2) if len(values) else None
        per_leaf = [r["leaf_purity"] for r in members if r.get("leaf_purity") is not None]
        line["leaf_purity"] = np.mean(per_leaf, axis=0).round(4).tolist() if per_leaf else None
        table.append(line)
    return table


@torch.no_grad()
def conditioning_use(run: Path, n: int = 1000, seed: int = 0) -> dict:
    """How much the model leans on its condition: the ε-loss on n test images (posterior, most
    probable leaf) with the condition present and dropped (zero VAE image and signal, what guidance
    dropout trains), per quarter of the timestep range, same t and noise for both."""
    from structgen.data.run_data import load_run_data
    from structgen.ddpm_api import load_ddpm
    from structgen.diffusion.process import DiffusionProcess
    from structgen.diffusion.schedule import QUARTERS, timestep_quarter
    from structgen.diffusion.vae_condition import choose_leaf, to_signed

    model, conditioner, schedule, _ = load_ddpm(run)
    process = DiffusionProcess(model, schedule)
    images = load_run_data(run_config(run)).test.images[:n]
    g = torch.Generator().manual_seed(seed)
    losses = {"conditioned": [], "dropped": []}
    ts = []
    for start in range(0, len(images), 250):
        x01 = torch.from_numpy(images[start:start + 250]).float() / 255.0
        parts = conditioner.posterior(x01)
        cond = conditioner.condition(parts, choose_leaf(parts.probs, "max"))
        t = torch.randint(0, schedule.T, (len(x01),), generator=g)
        noise = torch.randn(x01.shape, generator=g)
        for name, c in (("conditioned", cond), ("dropped", cond.dropped())):
            losses[name].append(process.loss(to_signed(x01), c, t=t, noise=noise)[0])
        ts.append(t)
    t = torch.cat(ts)
    quarter = timestep_quarter(t, schedule.T)
    use = {}
    for name, parts in losses.items():
        loss = torch.cat(parts)
        use[name] = [float(loss[quarter == q].mean()) for q in range(QUARTERS)] + [float(loss.mean())]
    return use


def class_kept(run: Path, classifier: Path, n: int, seed: int, guidance: float, strength: float) -> dict:
    """Does the model keep the class of the leaf image it is given, for the conditions it was trained
    on (posterior: the test images' most probable leaf) and for those `sample` mode gives it (prior
    root samples)? Per kind: the judge's mean confidence on the VAE images (how clear their class
    is) and the share of DDPM images given the same class as their own VAE image."""
    from structgen.data.run_data import run_test_split
    from structgen.ddpm_api import open_sampler
    from structgen.scoring.classifier import load_classifier
    from structgen.scoring.predict import class_probabilities

    runner, cfg, _, _ = open_sampler(run, (), seed, guidance=guidance, strength=strength)
    clf, _ = load_classifier(classifier, expect_dataset=cfg.data.dataset,
                             expect_shape=runner.conditioner.image_shape, device=runner.device)
    test = run_test_split(cfg).images                    # no labels needed: the judge names the classes
    kept = {}
    for kind, result in (("posterior", runner.run("recons", n, seed, originals=test)),
                         ("prior", runner.run("sample", n, seed))):
        vae, ddpm = class_probabilities(clf, result["vae"]), class_probabilities(clf, result["images"])
        kept[kind] = {"vae_confidence": float(vae.max(1).mean()),
                      "kept": float((vae.argmax(1) == ddpm.argmax(1)).mean())}
    return kept


def print_table(table: list[dict]) -> None:
    def cell(line, m):
        return "–" if line[m] is None else f"{line[m]:.3f} ± {line[m + '_spread']:.3f}"

    def settings(line):                                  # w and strength, blank for the TreeVAE's rows
        return "".join(f" {'' if line[k] is None else f'{line[k]:g}':>{width}s}"
                       for k, width in (("guidance", 4), ("strength", 5)))

    print(f"{'run':28s} {'signal':6s} {'model':9s} {'w':>4s} {'start':>5s} {'purity':>15s} {'agreement':>15s} "
          f"{'CFD':>15s}")
    for line in table:
        print(f"{line['run'][:28]:28s} {line['conditioning']:6s} {line['model']:9s}{settings(line)} "
              + " ".join(f"{cell(line, m):>15s}" for m in MEASURES))
    print("\nper-leaf purity (leaves in the tree's order, mean over seeds):")
    for line in table:
        if line.get("leaf_purity") is not None:
            print(f"{line['run'][:28]:28s} {line['model']:9s}{settings(line)}  "
                  + " ".join(f"{p:.2f}" for p in line["leaf_purity"]))


AXES = {"guidance": ("strength", "guidance weight w"),
        "strength": ("guidance", "start strength (1 = pure noise; s < 1: the VAE image noised to s·T)")}


def measure_figure(table: list[dict], x: str, path: Path) -> Path:
    """Purity, agreement and CFD against ``x`` (guidance or strength), a line per run and value
    of the other setting, the TreeVAE dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    other, xlabel = AXES[x]
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.4))
    for ax, m in zip(axes, MEASURES):
        for run in dict.fromkeys(line["run"] for line in table):
            for fixed in dict.fromkeys(line[other] for line in table if line["model"] == "diffusion"):
                mine = sorted((line for line in table if line["run"] == run and line["model"] == "diffusion"
                               and line[other] == fixed and line[m] is not None), key=lambda line: line[x])
                if not mine:
                    continue
                ax.errorbar([line[x] for line in mine], [line[m] for line in mine],
                            yerr=[line[f"{m}_spread"] for line in mine], marker="o", capsize=3,
                            label=f"{mine[0]['conditioning']} ({run}), {'w' if other == 'guidance' else 's'} {fixed:g}")
            vae = next((line for line in table if line["run"] == run and line["model"] == "vae"), None)
            if vae is not None and vae[m] is not None and ax.lines:
                ax.axhline(vae[m], color=ax.lines[-1].get_color(), linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title({"purity": "generation purity", "agreement": "agreement with the leaf's class",
                      "cfd": "CFD to the test set (lower is better)"}[m], fontsize=9)
    axes[0].legend(fontsize=7)
    fig.text(0.5, 0.005, "dotted: the TreeVAE's own samples (same root samples)", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ddpm", nargs="+", default=[], help="trained DDPM runs to score")
    parser.add_argument("--ablation", action="store_true", help="train none / leaf / path on --vae first")
    parser.add_argument("--vae", help="the TreeVAE run the ablation trains on")
    parser.add_argument("--config", default="configs/mnist.yml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="ablation", help="ablation runs are named NAME-none, NAME-leaf, NAME-path")
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0])
    parser.add_argument("--strengths", nargs="+", type=float, default=[1.0],
                        help="where sampling starts: 1 = pure noise; s < 1 = the leaf's VAE image noised to s·(T-1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="sampling seeds")
    parser.add_argument("--n", type=int, default=500, help="root samples for CFD")
    parser.add_argument("--per-leaf", type=int, default=50, help="images per leaf for purity and agreement")
    parser.add_argument("--classifier", help="judging classifier (default: the dataset's --degrade one)")
    parser.add_argument("--out", default="runs/benchmarks/diffusion_study")
    parser.add_argument("--kept", action="store_true",
                        help="also: how often each run keeps its VAE image's class, posterior vs prior conditions "
                             "(first --seeds seed, --n images each)")
    args = parser.parse_args()
    if args.ablation == bool(args.ddpm) or (args.ablation and not args.vae):
        parser.error("pass --ddpm RUN [RUN ...] to score trained runs, or --ablation --vae TREE_RUN to train them")
    if not all(0 < s <= 1 for s in args.strengths):
        parser.error(f"--strengths must lie in (0, 1]; got {args.strengths}")
    out = Path(args.out)
    runs = [Path(r) for r in args.ddpm]
    for path in runs + ([Path(args.vae)] if args.vae else []):    # bad paths stop here, before any work
        if not path.exists():
            parser.error(f"{path}: no such run folder or checkpoint")
    try:
        for run in runs:
            run_config(run)
    except BAD_INPUT as err:
        parser.error(str(err))
    dataset = (run_config(runs[0]) if runs else load_config(args.config, args.overrides)).data.dataset
    classifier = judge(dataset, args.classifier)
    if args.ablation:
        runs = train_ablation(args)
    start = time.perf_counter()
    rows = score_rows(runs, args.weights, args.seeds, classifier, args.n, args.per_leaf, out, args.strengths)
    table = summarise(rows)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "leaf_purity"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    use = {Path(run).name: conditioning_use(run) for run in runs}
    kept = [{"run": Path(run).name, "guidance": w, "strength": s,
             **class_kept(run, classifier, args.n, args.seeds[0], w, s)}
            for run in runs for w in args.weights for s in args.strengths] if args.kept else []
    (out / "study.json").write_text(json.dumps({"classifier": str(classifier), "runs": [str(r) for r in runs],
                                                "table": table, "conditioning_use": use, "class_kept": kept},
                                               indent=1))
    print_table(table)
    print("\nε-loss on test images, condition present / dropped, by timestep quarter (t < T/4 first) and overall:")
    for name, losses in use.items():
        print(f"{name[:28]:28s} " + "  ".join(f"{c:.4f}/{d:.4f}" for c, d in zip(losses["conditioned"],
                                                                             losses["dropped"])))
    if kept:
        print("\nclass kept from the VAE image (judge's confidence on the VAE images), posterior vs prior conditions:")
        for k in kept:
            print(f"{k['run'][:28]:28s} w {k['guidance']:g} s {k['strength']:g}  " + "  ".join(
                f"{kind} {k[kind]['kept']:.3f} ({k[kind]['vae_confidence']:.3f})" for kind in ("posterior", "prior")))
    print(f"figure: {measure_figure(table, 'guidance', out / 'guidance.png')}")
    if len(args.strengths) > 1:
        print(f"figure: {measure_figure(table, 'strength', out / 'strength.png')}")
    if args.ablation:
        print(f"figure: {compare_ddpm(runs, n=4, out=out / 'compare_ddpm.png')}")
    print(f"scored in {(time.perf_counter() - start) / 60:.1f} min; tables in {out}")


if __name__ == "__main__":
    main()
