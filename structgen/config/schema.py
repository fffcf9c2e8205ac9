"""The one typed schema of every structgen setting.

Defaults are the reference values for MNIST (algorithm.md §3.3 and §5); `configs/*.yml` override
them per dataset. Sections: run, data, model, training (the TreeVAE phases), evaluation,
diffusion, ray, tune, slurm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from structgen.config.fields import option

DATASETS = ("digits", "mnist", "fmnist", "cifar10", "synthetic", "folder", "arrays", "beton")
PRECISIONS = ("fp32", "bf16", "fp16")    # run.precision: training arithmetic (structgen/runtime/precision.py)

# Where spectral norm goes (structgen/nn/spectral.py says what each placement covers).
SPECTRAL_NORM = ("none", "decoders", "reference")
# Before placements existed `model.spectral_norm` was a bool that put spectral norm on the leaf
# decoders. Configs and checkpoints of those runs keep that meaning (true = decoders), so they
# rebuild and resume exactly; a new config names its placement.
LEGACY_SPECTRAL_NORM = {False: "none", True: "decoders"}


def spectral_norm_placement(value) -> str:
    """The placement a `model.spectral_norm` value names: one of SPECTRAL_NORM, or an old bool."""
    if not isinstance(value, str) and value in LEGACY_SPECTRAL_NORM:
        return LEGACY_SPECTRAL_NORM[bool(value)]
    if value in SPECTRAL_NORM:
        return value
    raise ValueError(f"spectral_norm = {value!r}: expected one of {', '.join(SPECTRAL_NORM)} (or an old true/false)")


@dataclass
class RunConfig:
    name: Optional[str] = option(None, "run folder name; default <timestamp>-<id> under runs_dir/<dataset>")
    seed: int = option(42, "global seed: weights, data order, sampling", min=0)
    runs_dir: str = option("runs", "root folder of run folders")
    device: str = option("auto", "auto picks cuda when present, else cpu", choices=("auto", "cpu", "cuda"))
    threads: int = option(0, "torch CPU threads; 0 = torch's default", min=0)
    precision: str = option("fp32", "training arithmetic: fp32; bf16 = autocast to bfloat16 (A100+ GPUs; on "
                                    "CPUs, AVX-512 BF16 ones included, no faster than fp32); fp16 = autocast to "
                                    "float16 with loss scaling (older GPUs). Evaluation and sampling always run "
                                    "in fp32", choices=PRECISIONS)
    channels_last: bool = option(False, "train convs on NHWC (channels-last) tensors: faster on tensor-core GPUs, "
                                        "no faster on CPU")
    progress: str = option("auto", "progress bars: auto (only on a terminal), bar or plain lines",
                           choices=("auto", "bar", "plain"))


@dataclass
class DataConfig:
    dataset: str = option("mnist", "dataset name", choices=DATASETS)
    data_dir: Optional[str] = option(None, "folder holding the dataset folders; default ../shared/data if present, "
                                           "else ./data")
    loader: str = option("memory", "memory = in-RAM uint8 tensors (fastest without augmentation); ffcv = .beton "
                                   "files from `structgen prepare-data --format ffcv` (faster two-view augmentation "
                                   "on CPU)", choices=("memory", "ffcv"))
    ffcv_dir: Optional[str] = option(None, "where .beton files live; default ./data/ffcv")
    ffcv_image_mode: str = option("raw", "image field of the .beton files: raw pixels (exact) or jpg (quality 90)",
                                  choices=("raw", "jpg"))
    ffcv_workers: int = option(0, "FFCV decoding threads; 0 = torch's thread count", min=0)
    memory_limit_gb: float = option(0.0, "most memory the images may take with data.loader memory (a larger set "
                                         "is refused, pointing to data.loader ffcv); 0 = half of what is free",
                                    min=0.0)
    num_clusters_data: int = option(0, "keep only this many classes (a seeded subset); 0 = all", min=0)
    test_fraction: float = option(0.2, "held-out share when a dataset ships a single split", min=0.01, max=0.9)
    train_subset: int = option(0, "use only this many training images (seeded); 0 = all", min=0)
    test_subset: int = option(0, "use only this many test images (seeded); 0 = all", min=0)
    # Your own images (dataset folder or arrays); README "Your own images".
    path: Optional[str] = option(None, "folder / arrays: the image folder, or the .npz / idx-ubyte images file; "
                                       "beton: the files' prefix (<path>-train.beton, <path>-test.beton)")
    image_size: int = option(28, "folder / arrays: every image is resized (antialiased) to this side", min=3, max=512)
    channels: int = option(1, "folder / arrays: 1 = greyscale, 3 = RGB (images are converted)", choices=(1, 3))
    labels: str = option("auto", "folder: auto = class sub-folders give labels when there are two or more; "
                                 "folders = require them; none = unlabelled", choices=("auto", "folders", "none"))
    on_bad_image: str = option("error", "folder: an unreadable image stops the run (error) or is logged and "
                                        "left out (skip)", choices=("error", "skip"))
    fingerprint: Optional[str] = option(None, "set by the run for folder / arrays: hash of the data files' names, "
                                              "sizes and contents; --resume on changed data is refused")


@dataclass
class ModelConfig:
    encoder: str = option("auto", "encoder/decoder family: cnn1 small CNN (28x28, any side), cnn2 ResNet (32x32, "
                                  "side = r x 2^k); auto = cnn2 for RGB images that fit it, else cnn1",
                          choices=("auto", "cnn1", "cnn2"))
    representation_dim: int = option(2, "spatial side r of every latent and bottom-up feature", min=1, max=16)
    latent_channels: int = option(16, "C_z: channels of every node's latent z", min=1)
    bottom_up_channels: int = option(32, "C_d: channels of every bottom-up feature", min=1)
    levels: int = option(7, "bottom-up levels (the encoder's and one per depth below the root); the deepest "
                            "possible leaf is at depth levels - 1", min=2, max=16)
    act_function: str = option("swish", "hidden activation", choices=("swish", "leaky_relu", "relu"))
    activation: str = option("sigmoid", "likelihood: sigmoid = BCE on [0,1] pixels, mse = sum of squares",
                             choices=("sigmoid", "mse"))
    res_connections: bool = option(False, "residual connection in Conv blocks whose in/out channels match")
    # Typed as the values the loader may pass through: the placements and the old bools.
    spectral_norm: Literal["none", "decoders", "reference", False, True] = option(
        "none", "spectral norm on: none; decoders (every leaf decoder conv); reference (where the reference code puts "
                "it: encoder and bottom-up convs, denses at depth >= 2); old true/false = decoders/none",
        choices=SPECTRAL_NORM + (False, True))
    dim_mod_conv: bool = option(False, "cnn2: strided conv / ConvT instead of avg-pool / bilinear")
    dropout_router: float = option(0.0, "dropout inside routers", min=0.0, max=0.9)


KL_ANNEALING = ("epoch", "step")
SPLIT_INIT = ("none", "kmeans")


@dataclass
class TrainingConfig:
    batch_size: int = option(256, "images per batch (x views with augment)", min=2)
    lr: float = option(1e-3, "Adam learning rate", above=0.0, max=1.0)
    weight_decay: float = option(1e-5, "Adam (coupled L2) weight decay", min=0.0)
    decay_lr: float = option(0.1, "StepLR gamma", above=0.0, max=1.0)
    decay_stepsize: int = option(100, "StepLR step, in epochs", min=1)
    num_epochs: int = option(150, "epochs of the initial root + 2-leaf tree", min=0)
    num_epochs_smalltree: int = option(150, "epochs per sub-tree while growing", min=0)
    num_epochs_intermediate_fulltrain: int = option(80, "full-tree epochs every 3 splits", min=0)
    num_epochs_finetuning: int = option(200, "final full-tree epochs after pruning", min=0)
    min_batches_per_epoch: int = option(0, "an epoch over images too few for this many batches passes over them "
                                           "again (each pass reshuffled) until it has them, so a small dataset or "
                                           "a small leaf's sub-tree still gets this many optimiser steps per epoch "
                                           "(the KL ramp and the learning-rate steps stay per epoch); 0 = one pass "
                                           "(the reference)", min=0)
    budget_minutes: float = option(0.0, "0 = train the epochs above; > 0 = scale the four epoch counts by one factor "
                                        "(proportions kept, each >= 1) to fit this many minutes of training, "
                                        "predicted from a few timed steps (evaluation not included); growth ends early "
                                        "rather than take the finetuning's share; the finetuning's length follows its "
                                        "measured pace to fill the budget without running past it", min=0.0)
    budget_scales_kl: bool = option(False, "with budget_minutes: divide decay_kl by the budget's epoch factor, so "
                                           "each growth phase (initial, sub-tree, intermediate, settle) ends at the "
                                           "alpha its configured length would reach; false = decay_kl per epoch as "
                                           "given (a shorter schedule then trains its growth at a lower alpha); the "
                                           "finetuning's ramp reaches 1 either way")
    intermediate_fulltrain: bool = option(True, "retrain the full tree every 3 splits")
    settle_rounds: int = option(0, "when growth is over with splits made since the last intermediate full-train: "
                                    "retrain the full tree (num_epochs_intermediate_fulltrain epochs) and grow again "
                                    "if that emptied leaves, at most this many times; 0 = stop growing at once (the "
                                    "reference)", min=0)
    young_split_keep: float = option(0.0, "at every full-tree retrain while growing (intermediate or settle): a "
                                          "child of a split made since the last one that keeps under this fraction "
                                          "of its probability mass through it is pruned at once and growth goes on "
                                          "(the joint training undid that split); its sibling may be split again, "
                                          "but not after a second undone split in a row; 0 = off (the reference)",
                                     min=0.0, max=1.0)
    grow: bool = option(True, "grow the tree beyond the initial depth")
    prune: bool = option(True, "prune leaves with under prune_threshold of the assignments")
    prune_after_finetuning: bool = option(True, "with prune: prune again after the final finetuning, removing leaves "
                                                "it left under prune_threshold (branches that died in it)")
    num_clusters_tree: int = option(10, "stop growing at this many effective leaves", min=1, max=64)
    max_depth: int = option(0, "deepest allowed leaf; 0 = model.levels - 1", min=0)
    initial_depth: int = option(1, "depth of the initial tree", min=1, max=6)
    max_grow_iterations: int = option(150, "upper bound on grow-loop iterations (sub-trees trained)", min=0)
    parallel_subtrees: int = option(1, "leaves split at once while growing: 1 = one sub-tree at a time, trained by "
                                       "every worker (the reference); k > 1 = rounds of up to k largest leaves, "
                                       "sub-tree j trained alone by worker j mod world_size on its own images, "
                                       "then all attached", min=1, max=64)
    kl_start: float = option(0.0, "KL weight alpha at the start of each phase", min=0.0, max=1.0)
    decay_kl: float = option(0.001, "alpha increment per epoch", min=0.0, max=1.0)
    kl_anneal: str = option("epoch", "how alpha rises: epoch = once per epoch (the reference; a 3-epoch finetuning "
                                     "goes 0 -> 0.5 -> 1); step = linearly batch by batch from each epoch's value "
                                     "to the next one's", choices=KL_ANNEALING)
    retrain_warmup_epochs: float = option(0.0, "linear learning-rate warm-up, in epochs, at the start of the "
                                               "intermediate full-trains and the final finetuning (whose fresh Adam "
                                               "re-routes images in its first batches); 0 = none, as the reference",
                                          min=0.0)
    finetune_lr_factor: float = option(1.0, "the final finetuning's learning rate as a multiple of training.lr "
                                            "(1 = the reference)", min=1e-4, max=10.0)
    split_init: str = option("none", "how a new split's routers start: none = untrained (the reference); kmeans = "
                                     "fitted to a 2-means split of the leaf's images (bottom-up features) for "
                                     "split_init_steps steps before the sub-tree trains", choices=SPLIT_INIT)
    split_init_steps: int = option(100, "split_init kmeans: router-fitting steps (batches of 128)", min=1)
    effective_leaf_threshold: float = option(0.01, "a leaf is effective above this share of probability mass",
                                             min=0.0, max=0.5)
    prune_threshold: float = option(0.01, "prune leaves below this share of argmax assignments", min=0.0, max=0.5)
    kl_clamp_sample: list[float] = option(default_factory=lambda: [-1.0, 1000.0],
                                          help="per-sample clamp of each node KL (reference values)")
    kl_clamp_batch: list[float] = option(default_factory=lambda: [-10.0, 1e10],
                                         help="clamp of the batch-mean non-root KL (reference values)")
    augment: bool = option(False, "two augmented views per image (CIFAR contrastive extension)")
    augmentation_method: str = option("simple", "simple, or InfoNCE,instancewise_full for the contrastive losses",
                                      choices=("simple", "InfoNCE,instancewise_full", "InfoNCE", "instancewise_full"))
    aug_decisions_weight: float = option(1.0, "weight of the contrastive loss", min=0.0)
    checkpoint_every: int = option(1, "save a checkpoint every N epochs (and at every phase end)", min=1)


@dataclass
class EvaluationConfig:
    batch_size: int = option(1000, "batch size for evaluation passes", min=1)
    compute_ll: bool = option(False, "importance-weighted log-likelihood estimate at the end")
    ll_samples: int = option(100, "importance samples K for the log-likelihood", min=1)
    baselines: bool = option(True, "k-means and Ward on pixels, same data and cluster count")
    samples_per_leaf: int = option(16, "images per leaf in generated grids", min=1)
    real_per_leaf: int = option(16, "tree figure: test images shown under each leaf, those it holds most "
                                    "confidently; 0 = none", min=0)
    n_generate: int = option(256, "images drawn by `structgen generate`", min=1)


@dataclass
class DiffusionConfig:
    vae_run: Optional[str] = option(None, "TreeVAE run folder (or checkpoint) to condition on; "
                                          "`train-ddpm --vae` sets it")
    dim: int = option(64, "UNet base channels", min=8)
    dim_mults: list[int] = option(default_factory=lambda: [1, 2, 2, 2], help="channel multiplier per level", min=1,
                                  min_len=1)
    n_residual: int = option(2, "residual blocks per level (the up path has one more)", min=1)
    attn_resolutions: list[int] = option(default_factory=lambda: [16],
                                         help="feature-map sizes in pixels (of the input padded to a multiple of "
                                              "2^(levels-1)) with attention; the middle block always has it", min=1)
    dropout: float = option(0.3, "UNet dropout", min=0.0, max=0.9)
    n_heads: int = option(8, "attention heads", min=1)
    beta1: float = option(1e-4, "first beta of the linear schedule", min=0.0, max=1.0)
    beta2: float = option(0.02, "last beta of the linear schedule", min=0.0, max=1.0)
    n_timesteps: int = option(1000, "diffusion steps T", min=2)
    conditioning: str = option("leaf", "signal besides the leaf's VAE image: leaf id (Diffuse-TreeVAE), "
                                       "root-to-leaf path (TreeDiffusion) or none (VAE image only)",
                               choices=("none", "leaf", "path"))
    cfg_rate: float = option(0.0, "per-sample condition dropout probability for classifier-free guidance",
                             min=0.0, max=1.0)
    guidance_weight: float = option(0.0, "classifier-free guidance weight w when sampling: "
                                         "(1+w) eps(cond) - w eps(uncond)", min=0.0)
    lr: float = option(2e-4, "Adam learning rate", above=0.0, max=1.0)
    warmup_steps: int = option(5000, "linear LR warm-up steps", min=0)
    lr_decay: str = option("none", "after the warm-up: none = constant LR (the reference); cosine = a half cosine "
                                   "to 0 at the last step of diffusion.epochs (short runs end on small steps)",
                           choices=("none", "cosine"))
    grad_clip: float = option(1.0, "gradient norm clip; 0 = off", min=0.0)
    ema_decay: float = option(0.9999, "EMA decay of the sampling weights", min=0.0, max=1.0)
    ema_warmup: bool = option(True, "EMA decay min(ema_decay, (1+step)/(10+step)): short runs get a usable EMA "
                                    "(the reference uses the constant decay)")
    batch_size: int = option(256, "training batch size (all ranks together)", min=1)
    epochs: int = option(1000, "training epochs", min=0)
    checkpoint_every: int = option(1, "save checkpoints/last.pt every N epochs (and at the end)", min=1)
    checkpoint_every_steps: int = option(0, "also save it every N optimiser steps; 0 = epoch ends only", min=0)
    sample_every: int = option(50, "write a preview grid (EMA weights) every N epochs and at the end; 0 = never",
                              min=0)
    n_samples: int = option(64, "images in previews and the default --n of `structgen sample`", min=1)
    sample_batch_size: int = option(256, "images per sampler call (root samples x leaves for *_all_leaves)", min=1)
    sampler: str = option("ddpm", "ddpm (ancestral, T steps) or ddim", choices=("ddpm", "ddim"))
    variance: str = option("fixedlarge", "DDPM reverse variance: fixedlarge (beta_t, the reference) or "
                                         "fixedsmall (posterior variance)", choices=("fixedlarge", "fixedsmall"))
    n_steps: int = option(1000, "reverse steps for ddim", min=1)
    eta: float = option(0.0, "DDIM eta (0 = deterministic, 1 = ancestral-like)", min=0.0, max=1.0)
    skip_strategy: str = option("quad", "DDIM timestep spacing, both ending at T-1", choices=("uniform", "quad"))
    strength: float = option(1.0, "where sampling starts: 1 = pure noise x_T (the reference); s < 1 = the leaf's "
                                  "VAE image noised to timestep s*(T-1), then denoised from there (SDEdit): "
                                  "lower keeps more of the leaf's image", above=0.0, max=1.0)
    leaf_choice: str = option("max", "leaf of the `recons` and `sample` modes: max = most probable, "
                                     "sample = drawn from the leaf probabilities (the reference)",
                              choices=("max", "sample"))


@dataclass
class RayConfig:
    address: Optional[str] = option(None, "Ray cluster address; None starts or joins a local one")
    num_workers: int = option(1, "Ray Train workers", min=1)
    use_gpu: bool = option(False, "one GPU per worker")
    cpus_per_worker: int = option(1, "CPUs per worker", min=1)
    storage_path: Optional[str] = option(None, "absolute folder for Ray Train / Tune results; default "
                                               "<runs_dir>/ray (Train), <runs_dir>/tune (Tune)")
    max_failures: int = option(0, "worker-group restarts from the latest checkpoint", min=-1)
    placement_strategy: str = option("PACK", "where Ray puts the workers: PACK fills a node first; SPREAD one per "
                                             "node where it can (a restart after a lost node packs onto the rest); "
                                             "STRICT_SPREAD one per node or wait; STRICT_PACK all on one node",
                                     choices=("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"))


@dataclass
class TuneConfig:
    # The defaults of a sweep file's settings (structgen.sweeps): what the file gives wins.
    num_samples: int = option(4, "trials per sweep", min=1)
    metric: str = option("elbo", "objective reported by trials")
    mode: str = option("max", "maximise or minimise the metric", choices=("max", "min"))
    scheduler: str = option("asha", "trial scheduler", choices=("asha", "fifo"))
    searcher: str = option("random", "search algorithm", choices=("random", "optuna"))
    grace_period: int = option(1, "ASHA: reports before a trial may be stopped", min=1)
    max_concurrent: int = option(1, "trials running at once", min=1)
    reuse_actors: bool = option(True, "a finished trial's Ray actor runs the next one (no new Python and torch "
                                      "import per trial); short trials may then all run on one node, one after "
                                      "another, even with max_concurrent > 1")


@dataclass
class SlurmConfig:
    # Cluster-specific values live here or in STRUCTGEN_SLURM_* variables, never in code;
    # `slurm/launch.py` flags override both (flag > environment > this section).
    partition: Optional[str] = option(None, "SLURM partition; env STRUCTGEN_SLURM_PARTITION")
    account: Optional[str] = option(None, "SLURM account; env STRUCTGEN_SLURM_ACCOUNT")
    qos: Optional[str] = option(None, "SLURM QOS; env STRUCTGEN_SLURM_QOS")
    nodes: int = option(1, "nodes per job", min=1)
    gpus_per_node: int = option(0, "GPUs per node; one task (DDP rank) per GPU, one task per node on CPU", min=0)
    cpus_per_task: int = option(2, "CPUs per task (also torch's thread count when run.threads = 0)", min=1)
    mem_gb: int = option(8, "memory per node in GB", min=1)
    timeout_min: int = option(60, "time limit in minutes", min=1)
    folder: str = option("slurm_logs/%j", "submitit log folder (%j = job id); env STRUCTGEN_SLURM_FOLDER")
    signal_delay_s: int = option(120, "the time-limit signal (USR2) comes this long before the limit: the job "
                                      "requeues itself and resumes from its last checkpoint", min=10)
    max_timeouts: int = option(3, "time-limit requeues allowed per job (preemptions do not count)", min=0)
    setup: list[str] = option(default_factory=list, help="shell lines run before the job, e.g. module load ...")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def depth_limit(self) -> int:
        """The deepest leaf allowed: max_depth when set, else the bottom-up chain's limit."""
        chain = self.model.levels - 1
        return min(self.training.max_depth, chain) if self.training.max_depth else chain
