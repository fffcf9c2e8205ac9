"""Writes configs/*.yml from the schema's defaults plus each profile's overrides.

    .venv/bin/python configs/profiles.py          # rewrite the files
    .venv/bin/python configs/profiles.py --check  # exit 1 if a file is out of date (tests run this)

The schema (structgen/config/schema.py) is the single source of the keys and their comments;
this file holds only what differs per profile. The MNIST defaults of the schema are the
reference values of algorithm.md §3.3 / §5.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from structgen.config import config_to_yaml, load_config  # noqa: E402

PROFILES = {
    "mnist": ("MNIST, reference values of algorithm.md §3.3 (DTV-mnist) and §5 (DTV DDPM), except how the DDPM\n"
              "samples: from the leaf's VAE image noised to 0.5*T, with guidance w = 4 (trained with cfg_rate 0.1),\n"
              "the best purity/CFD measured on MNIST (README \"Where sampling starts\"); strength 1, cfg_rate 0 and\n"
              "guidance_weight 0 are the reference; a finished growth settles (retrains the full tree, grows\n"
              "again where that empties leaves) once or twice before the finetuning (README \"Settling\"); and an\n"
              "epoch of a small set passes over it until it has 20 batches (README \"Small training sets\")", [
        "data.dataset=mnist", "model.encoder=cnn1", "model.act_function=swish", "model.spectral_norm=reference",
        "model.res_connections=false", "training.kl_start=0.0", "training.decay_kl=0.001",
        "training.settle_rounds=2", "training.min_batches_per_epoch=20",
        "diffusion.strength=0.5", "diffusion.cfg_rate=0.1", "diffusion.guidance_weight=4"]),
    "fmnist": ("Fashion-MNIST, reference values of algorithm.md §3.3 (DTV-fmnist) and §5, except spectral norm:\n"
               "the reference placement of the MNIST profile (the reference's FMNIST config has it off), and\n"
               "settling and small-set epochs as the MNIST profile", [
        "data.dataset=fmnist", "model.act_function=leaky_relu", "model.res_connections=true",
        "model.spectral_norm=reference", "training.settle_rounds=2", "training.min_batches_per_epoch=20",
        "training.kl_start=0.5", "training.decay_kl=0.001"]),
    "cifar10": ("CIFAR-10, reference values of algorithm.md §3.3 (DTV-cifar10) and §5", [
        "data.dataset=cifar10", "model.encoder=cnn2", "model.representation_dim=4",
        "model.latent_channels=64", "model.bottom_up_channels=128",
        "model.activation=mse", "model.res_connections=true", "model.dim_mod_conv=true",
        "training.num_epochs_intermediate_fulltrain=0", "training.num_epochs_finetuning=0",
        "training.kl_start=0.01", "training.decay_kl=0.01", "training.augment=true",
        "training.augmentation_method=InfoNCE,instancewise_full", "training.aug_decisions_weight=100",
        "diffusion.attn_resolutions=[16]"]),
    "digits": ("digits: scikit-learn's bundled 8x8 digits upsampled to 28x28 -- the small, fast profile\n"
               "for the demo (a few minutes on 2 CPU cores). Model as MNIST; schedule shortened, no intermediate\n"
               "full-trains (on 1,437 images they mostly collapse young branches), growth capped at 12 splits;\n"
               "every split starts from a 2-means split of its images and the finetuning runs at 0.3x the rate\n"
               "(chosen on validation splits, README: The demo against pixel clustering).\n"
               "DDPM: a small UNet (dim 32, one residual block per level, attention only in the middle block),\n"
               "15 epochs (~330 steps: rough digits), DDIM-50 sampling.", [
        "data.dataset=digits", "training.batch_size=128", "training.num_epochs=30",
        "training.num_epochs_smalltree=15", "training.intermediate_fulltrain=false",
        "training.num_epochs_intermediate_fulltrain=10", "training.num_epochs_finetuning=15",
        "training.max_grow_iterations=12", "training.kl_start=0.0", "training.decay_kl=0.02",
        "training.split_init=kmeans", "training.finetune_lr_factor=0.3",
        "evaluation.batch_size=500", "diffusion.batch_size=64", "diffusion.epochs=15",
        "diffusion.warmup_steps=100", "diffusion.dim=32", "diffusion.n_residual=1", "diffusion.attn_resolutions=[]",
        "diffusion.dropout=0.1", "diffusion.sampler=ddim", "diffusion.n_steps=50", "diffusion.sample_every=5"]),
}


def render(name: str) -> str:
    header, overrides = PROFILES[name]
    return config_to_yaml(load_config(None, overrides), header=header)


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name in PROFILES:
        path = HERE / f"{name}.yml"
        text = render(name)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run: python configs/profiles.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
