"""Every config error path, the shipped profiles, and the resolved-config round trip."""
import re
from pathlib import Path

import pytest
import yaml

from structgen.config import ConfigError, all_keys, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ["digits", "mnist", "fmnist", "cifar10"]


def write(tmp_path, text, name="c.yml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_key_names_file_key_and_closest(tmp_path):
    p = write(tmp_path, "training:\n  lr_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "training.lr_rate" in msg and "did you mean 'training.lr'" in msg


def test_unknown_section_and_key_in_wrong_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainng'.*did you mean 'training'"):
        load_config(write(tmp_path, "trainng:\n  lr: 0.1\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'model.batch_size'.*training.batch_size"):
        load_config(write(tmp_path, "model:\n  batch_size: 3\n"))


@pytest.mark.parametrize("override, fragment", [
    ("training.lr=abc", "training.lr = 'abc' is not allowed: expected a number"),
    ("training.batch_size=1.5", "training.batch_size = 1.5 is not allowed: expected an integer"),
    ("training.grow=yes please", "training.grow = 'yes please' is not allowed: expected true or false"),
    ("training.batch_size=1", "training.batch_size = 1 is not allowed: expected >= 2"),
    ("training.weight_decay=-1", "training.weight_decay = -1.0 is not allowed: expected >= 0.0"),
    ("training.lr=-1", "training.lr = -1.0 is not allowed: expected > 0.0"),
    ("model.act_function=tanh", "one of swish, leaky_relu, relu"),
    ("data.dataset=imagenet", "one of digits, mnist, fmnist, cifar10, synthetic"),
    ("model.latent_channels=[16]", "model.levels = 1 is not allowed: expected >= 2"),
    ("model.latent_channels=[0,0]", "model.latent_channels = 0 is not allowed: expected >= 1"),
    ("model.latent_channels=[16,8]", "model.latent_channels = [16, 8]: structgen builds every level with the same"),
    ("model.levels=1", "model.levels = 1 is not allowed: expected >= 2"),
    ("training.dropout=0.1", "did you mean"),
])
def test_wrong_type_or_range_names_key_value_and_allowed(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)
    assert f"--set {override}" in str(err.value)


def test_cross_key_rules():
    with pytest.raises(ConfigError, match="latent_channels has 3 levels, model.bottom_up_channels has 7"):
        load_config(None, ["model={latent_channels: [16,16,16], bottom_up_channels: [32,32,32,32,32,32,32]}"])
    with pytest.raises(ConfigError, match="max_depth = 7 is deeper"):
        load_config(None, ["training.max_depth=7"])
    with pytest.raises(ConfigError, match="beta1"):
        load_config(None, ["diffusion.beta1=0.5", "diffusion.beta2=0.1"])
    with pytest.raises(ConfigError, match="low <= high"):
        load_config(None, ["training.kl_clamp_sample=[5, 1]"])
    with pytest.raises(ConfigError, match="num_epochs_smalltree = 0 with training.grow = true"):
        load_config(None, ["training.num_epochs_smalltree=0"])
    assert load_config(None, ["training.num_epochs_smalltree=0", "training.grow=false"]).training.grow is False


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "training: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="'training' is a section"):
        load_config(write(tmp_path, "training: 3\n"))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["training.lr"])


def test_overrides_beat_the_file_and_scientific_notation_is_a_number(tmp_path):
    p = write(tmp_path, "training:\n  lr: 1e-3\n  batch_size: 64\n")
    cfg = load_config(p, ["training.batch_size=32"])
    assert cfg.training.lr == pytest.approx(1e-3) and cfg.training.batch_size == 32


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_load_and_every_key_has_a_comment(name):
    path = ROOT / "configs" / f"{name}.yml"
    load_config(path)
    data = yaml.safe_load(path.read_text())
    flat = {f"{s}.{k}" for s, sub in data.items() for k in sub}
    assert flat == set(all_keys()), "the profile must list every schema key"
    for line in path.read_text().splitlines():
        if line.startswith("  ") and not line.lstrip().startswith("#"):
            assert re.search(r"  # \S", line), f"{name}.yml: key without a comment: {line!r}"


def test_profiles_carry_reference_values():
    mnist, fmnist, cifar = (load_config(ROOT / "configs" / f"{n}.yml") for n in ("mnist", "fmnist", "cifar10"))
    assert mnist.model.spectral_norm == "reference"
    assert mnist.training.decay_kl == 0.001 and mnist.training.kl_start == 0
    assert (mnist.training.num_epochs, mnist.training.num_epochs_smalltree,
            mnist.training.num_epochs_intermediate_fulltrain, mnist.training.num_epochs_finetuning) == (150, 150, 80, 200)
    assert fmnist.training.kl_start == 0.5 and fmnist.model.act_function == "leaky_relu"
    assert fmnist.model.spectral_norm == "reference"        # deliberately not the reference's FMNIST value (off)
    assert mnist.training.settle_rounds == fmnist.training.settle_rounds == 2       # not the reference's 0 (README)
    assert cifar.model.encoder == "cnn2" and cifar.model.representation_dim == 4
    assert (cifar.model.latent_channels, cifar.model.bottom_up_channels, cifar.model.levels) == (64, 128, 7)
    assert cifar.training.aug_decisions_weight == 100 and cifar.training.num_epochs_finetuning == 0
    assert cifar.model.activation == "mse" and cifar.training.decay_kl == 0.01
    assert mnist.diffusion.n_timesteps == 1000 and mnist.diffusion.ema_decay == 0.9999


def test_spectral_norm_is_a_placement_and_old_bools_keep_their_meaning(tmp_path):
    from structgen.models.treevae import ModelSpec
    for text, placement in (("reference", "reference"), ("decoders", "decoders"), ("none", "none"),
                            ("true", "decoders"), ("false", "none")):
        cfg = load_config(write(tmp_path, f"model:\n  spectral_norm: {text}\n"))
        assert ModelSpec.from_config(cfg.model, (1, 28, 28)).spectral_norm == placement
    with pytest.raises(ConfigError, match="model.spectral_norm = 'encoder' is not allowed: expected one of none, "
                                          "decoders, reference"):
        load_config(None, ["model.spectral_norm=encoder"])
    # An old run's config keeps its bool: resuming compares it with the checkpoint's config.
    old = load_config(write(tmp_path, "model:\n  spectral_norm: true\n"))
    assert old.model.spectral_norm is True
    assert load_config(save_config(old, tmp_path / "config.yml")) == old


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "cifar10.yml", ["training.lr=3e-4", "run.name=x"])
    path = save_config(cfg, tmp_path / "config.yml", header="resolved")
    assert load_config(path) == cfg


def test_profiles_are_generated_from_the_schema():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(ROOT / "configs" / "profiles.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_launcher_flags_are_config_keys_with_the_schemas_types_and_help():
    """ray_jobs/* and `python -m structgen.launch.tune_main` take the ray section's keys as flags;
    a given flag overrides the file and is checked like --set, an absent one changes nothing."""
    import dataclasses

    from structgen.config.schema import RayConfig
    from structgen.launch.job_args import RAY_FLAGS, job_config, job_parser

    parser = job_parser("test")
    helps = {a.dest: a.help for a in parser._actions}
    for field in dataclasses.fields(RayConfig):
        if field.name in RAY_FLAGS:
            assert helps[field.name].startswith(field.metadata["help"]) and f"ray.{field.name}" in helps[field.name]
    args = parser.parse_args(["--config", "configs/digits.yml", "--num-workers", "3", "--use-gpu",
                              "--storage-path", "/tmp/a b:c", "--set", "ray.max_failures=2"])
    cfg = job_config(args)
    assert (cfg.ray.num_workers, cfg.ray.use_gpu, cfg.ray.storage_path, cfg.ray.max_failures) == (3, True, "/tmp/a b:c", 2)
    assert job_config(parser.parse_args(["--config", "configs/digits.yml"])).ray == load_config("configs/digits.yml").ray
    with pytest.raises(ConfigError, match="ray.num_workers = 0"):
        job_config(parser.parse_args(["--num-workers", "0"]))
    with pytest.raises(SystemExit):                       # argparse: the schema's type
        parser.parse_args(["--cpus-per-worker", "two"])


def test_slurm_resource_flags_obey_the_schemas_bounds():
    from structgen.config.schema import SlurmConfig
    from structgen.launch.slurm import resolve_resources

    with pytest.raises(ConfigError, match="slurm.nodes = 0"):
        resolve_resources(SlurmConfig(), {"nodes": 0})
    with pytest.raises(ConfigError, match="slurm.mem_gb = 0"):
        resolve_resources(SlurmConfig(mem_gb=0), {})
    res = resolve_resources(SlurmConfig(), {"nodes": 2, "partition": None}, env={"STRUCTGEN_SLURM_PARTITION": "gpu"})
    assert (res.nodes, res.partition) == (2, "gpu")


def test_old_per_level_channel_lists_load_as_one_value_and_levels(tmp_path):
    """Configs (and checkpoints' configs) from before model.levels gave one channel per level."""
    old = tmp_path / "old.yml"
    old.write_text("model:\n  latent_channels: [8, 8, 8, 8]\n  bottom_up_channels: [24, 24, 24, 24]\n")
    cfg = load_config(old)
    assert (cfg.model.latent_channels, cfg.model.bottom_up_channels, cfg.model.levels) == (8, 24, 4)
    assert cfg.depth_limit == 3
    assert load_config(None, ["model.levels=4", "model.latent_channels=8", "model.bottom_up_channels=24"]).model \
        == cfg.model
    with pytest.raises(ConfigError, match=r"old.yml: model.latent_channels has 4 levels, model.levels = 5"):
        old.write_text("model:\n  latent_channels: [8, 8, 8, 8]\n  levels: 5\n")
        load_config(old)


def test_a_checkpoint_config_with_channel_lists_resumes_with_the_same_model(tmp_path):
    from structgen.config import config_to_dict
    from structgen.errors import CheckpointError
    from structgen.runtime.resume import RUN_FREE, check_resumable

    cfg = load_config(None, ["model.levels=5"])
    saved = config_to_dict(cfg)
    saved["model"] = {**saved["model"], "latent_channels": [16] * 5, "bottom_up_channels": [32] * 5}
    del saved["model"]["levels"]
    check_resumable(saved, cfg, tmp_path / "last.pt", free=RUN_FREE)          # the same model: no complaint
    with pytest.raises(CheckpointError, match="model.levels: checkpoint 5 vs now 7"):
        check_resumable(saved, load_config(None), tmp_path / "last.pt", free=RUN_FREE)
