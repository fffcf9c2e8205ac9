NAME = "prepare-data"
HELP = "verify a dataset and print its summary; --format ffcv also writes its .beton files"


def add_arguments(p) -> None:
    from structgen.commands import add_config_arguments

    p.add_argument("--dataset", "-d", help="digits, mnist, fmnist, cifar10, synthetic, or folder / arrays with "
                                           "--path (default: the config's)")
    p.add_argument("--data-dir", help="folder holding the dataset folders")
    p.add_argument("--path", help="folder / arrays: your image folder, or .npz / idx-ubyte file (data.path)")
    p.add_argument("--format", choices=("memory", "ffcv"), default="memory",
                   help="memory: verify and summarise the in-memory arrays; ffcv: also write "
                        "<ffcv-dir>/<dataset>-{train,test}.beton for data.loader=ffcv")
    p.add_argument("--seed", type=int,
                   help="run.seed: the split of single-split datasets and the subsets (default 42)")
    p.add_argument("--ffcv-dir", help="where to write .beton files (data.ffcv_dir; default ./data/ffcv)")
    p.add_argument("--image-mode", choices=("raw", "jpg"), help="data.ffcv_image_mode: raw pixels or JPEG")
    p.add_argument("--workers", type=int, default=0, help="writer processes; 0 = all cores")
    add_config_arguments(p)


def _config(args):
    from structgen.config import ConfigError, load_config

    if not args.dataset and not args.config:
        raise ConfigError("prepare-data: give --dataset NAME or --config FILE")
    if args.dataset:
        from structgen.data import DATASETS, dataset_shape

        if args.dataset not in DATASETS:
            dataset_shape(args.dataset)  # an unknown name fails here, with the closest valid one
    flags = [("data.dataset", args.dataset), ("data.data_dir", args.data_dir), ("data.path", args.path),
             ("run.seed", args.seed),
             ("data.ffcv_dir", args.ffcv_dir), ("data.ffcv_image_mode", args.image_mode)]
    # The flags win over --set, which wins over the file.
    return load_config(args.config, list(args.overrides) + [f"{k}={v}" for k, v in flags if v is not None])


def run(args) -> int:
    import time

    from structgen.data import format_summary, summarize

    cfg = _config(args)
    if args.format == "memory":
        from structgen.data import load_split

        d = cfg.data
        for split in ("train", "test"):
            ds = load_split(d.dataset, split, d.data_dir, seed=cfg.run.seed, test_fraction=d.test_fraction,
                            data_cfg=d)
            print(format_summary(summarize(ds)))
        print(f"{d.dataset}: OK")
        return 0

    from structgen.data.ffcv_files import beton_path, write_beton
    from structgen.data.loaders import ffcv_dir, rebuild_command
    from structgen.data.run_data import load_run_data

    data = load_run_data(cfg)            # the arrays a run with this config trains on
    folder, command = ffcv_dir(cfg.data), rebuild_command(cfg.data, cfg.run.seed)
    for ds in (data.train, data.test):
        print(format_summary(summarize(ds)))
        t0 = time.perf_counter()
        path = write_beton(ds, beton_path(folder, ds.name, ds.split), cfg.data.ffcv_image_mode,
                           args.workers or None, rebuild=command)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {cfg.data.ffcv_image_mode}) "
              f"in {time.perf_counter() - t0:.1f} s")
    mode = f" --set data.ffcv_image_mode={cfg.data.ffcv_image_mode}" if cfg.data.ffcv_image_mode != "raw" else ""
    if cfg.data.path:                    # your own images: the run needs the same data keys
        mode += f" --set data.dataset={cfg.data.dataset} --set data.path={cfg.data.path}"
    print(f"{cfg.data.dataset}: OK; train with --set data.loader=ffcv --set data.ffcv_dir={folder}{mode}")
    return 0
