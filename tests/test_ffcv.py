"""The FFCV data path: .beton files, their checks, FFCVLoader's order and sharding, and a
training step on its batches. Files are small and written once per module (FFCV compiles each
pipeline with numba on first use, so loaders of the same settings are shared too)."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from structgen.config import load_config
from structgen.data import DataError, ImageSet, TensorLoader, load_split
from structgen.data.ffcv_files import beton_path, sidecar_path, write_beton
from structgen.data.ffcv_loader import FFCVLoader
from structgen.data.loaders import make_loader
from structgen.launch.hosts import free_loopback_port

BS = 32


def _grey(name="digits"):
    ds = load_split("digits", "train")
    return replace(ds, images=ds.images[:400], labels=ds.labels[:400], name=name)


def _colour(n=96, smooth=False):
    rng = np.random.default_rng(1)
    if smooth:   # JPEG-friendly: 16x16 random colour blocks
        images = np.kron(rng.integers(0, 256, (n, 3, 2, 2)), np.ones((1, 1, 16, 16))).astype(np.uint8)
    else:        # noise: every byte matters for the round trip
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return ImageSet(images, rng.integers(0, 10, n).astype(np.int64), "cifar10", "train", [str(i) for i in range(10)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv")
    grey, colour = _grey(), _colour()
    return {"dir": root, "grey": grey, "colour": colour,
            "grey_path": write_beton(grey, beton_path(root, "digits", "train"), num_workers=1),
            "colour_path": write_beton(colour, root / "noise.beton", num_workers=1)}


def _all(loader):
    xs, ys, idx = zip(*loader)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


def _loader(path, **kw):
    kw.setdefault("num_workers", 1)
    return FFCVLoader(path, kw.pop("batch_size", BS), **kw)


@pytest.mark.parametrize("kind", ["grey", "colour"])
def test_raw_round_trip_is_byte_exact(files, kind):
    ds, path = files[kind], files[f"{kind}_path"]
    x, y, idx = _all(_loader(path, shuffle=False, drop_last=False))
    assert x.dtype == torch.float32 and x.shape == (len(ds),) + ds.images.shape[1:]
    assert torch.equal(idx, torch.arange(len(ds)))
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(ds.images))
    assert torch.equal(y, torch.from_numpy(ds.labels))
    # shuffled: every batch's images belong to the indices it names
    x, _, idx = next(iter(_loader(path, seed=5)))
    assert not torch.equal(idx, torch.arange(BS))
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(ds.images[idx.numpy()]))


def test_jpg_field_is_close_not_exact(tmp_path):
    ds = _colour(smooth=True)
    path = write_beton(ds, tmp_path / "jpg.beton", image_mode="jpg", num_workers=1)
    assert json.loads(sidecar_path(path).read_text())["image_mode"] == "jpg"
    x, _, _ = _all(_loader(path, shuffle=False, drop_last=False))
    err = (x - torch.from_numpy(ds.images).float() / 255).abs()
    assert 0 < err.mean() < 0.03


def test_order_is_tensor_loaders_and_changes_per_epoch(files):
    ds = files["grey"]
    ffcv, mem = _loader(files["grey_path"], seed=7), TensorLoader(ds.images, ds.labels, BS, seed=7)
    epochs = []
    for _ in range(2):
        (xf, yf, idf), (xm, ym, idm) = _all(ffcv), _all(mem)
        assert torch.equal(idf, idm) and torch.equal(xf, xm) and torch.equal(yf, ym)
        epochs.append(idf)
    assert ffcv.epoch == 2 and not torch.equal(epochs[0], epochs[1])


def test_several_passes_per_epoch_are_tensor_loaders_too(files):
    ds, subset = files["grey"], np.arange(0, 90)          # 90 images: 2 batches of 32 in one pass
    ffcv = _loader(files["grey_path"], seed=3, indices=subset, min_batches=7)
    mem = TensorLoader(ds.images, ds.labels, BS, seed=3, indices=subset, min_batches=7)
    (xf, _, idf), (xm, _, idm) = _all(ffcv), _all(mem)
    assert len(ffcv) == len(mem) >= 7 and len(idf) == len(ffcv) * BS
    assert torch.equal(idf, idm) and torch.equal(xf, xm)


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shards_are_disjoint_complete_and_equal_length(files, drop_last):
    subset = np.arange(3, 400, 2)                      # 199 samples: not a multiple of 3 ranks
    shards = [_loader(files["grey_path"], seed=1, rank=r, world_size=3, drop_last=drop_last, indices=subset)
              for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    got = [_all(s)[2] for s in shards]
    assert all(len(g) == len(got[0]) for g in got)      # same batches and samples per rank
    seen = torch.cat(got).numpy()
    assert set(seen) <= set(subset)
    if drop_last:                                       # disjoint, only the tail is dropped
        assert len(set(seen)) == len(seen) == 199 // 3 // BS * BS * 3
    else:                                               # every index served; padding repeats a few
        assert set(seen) == set(subset) and len(seen) == 3 * 67


def test_order_after_resume_is_the_order_without_restart(files):
    a = _loader(files["grey_path"], seed=3)
    _all(a)
    state = a.state_dict()
    expected = _all(a)[2]                               # epoch 1 of the uninterrupted loader
    b = _loader(files["grey_path"], seed=0)            # a rebuilt loader, as after a restart
    b.load_state_dict(state)
    assert torch.equal(_all(b)[2], expected)
    partial = iter(b)                                   # an abandoned pass does not move the epoch
    next(partial)
    partial.close()
    assert b.state_dict() == {"epoch": 2, "seed": 3}


def test_bad_files_fail_with_the_rebuild_command(files, tmp_path):
    good = files["grey_path"]

    def copy(name):
        dst = tmp_path / name
        dst.write_bytes(good.read_bytes())
        sidecar_path(dst).write_text(sidecar_path(good).read_text())
        return dst

    def error(path, **expect):
        with pytest.raises(DataError) as e:
            FFCVLoader(path, BS, expect=expect or None)
        msg = str(e.value)
        assert str(path) in msg and "structgen prepare-data --dataset digits --format ffcv" in msg
        return msg

    assert "does not exist" in error(tmp_path / "digits-train.beton")
    truncated = copy("digits-train.beton")
    truncated.write_bytes(good.read_bytes()[:-100])
    assert "truncated" in error(truncated)
    no_sidecar = copy("digits-test.beton")
    sidecar_path(no_sidecar).unlink()
    assert "sidecar" in error(no_sidecar)
    assert "dataset 'digits'" in error(copy("a.beton"), dataset="mnist")
    assert "shape" in error(copy("b.beton"), shape=(3, 32, 32))
    old = copy("c.beton")
    meta = json.loads(sidecar_path(old).read_text())
    sidecar_path(old).write_text(json.dumps({**meta, "format_version": 0}))
    assert "format 0" in error(old)
    garbage = copy("d.beton")
    garbage.write_bytes(b"\xff" * 64 + good.read_bytes()[64:])   # same size, broken header
    assert "cannot open" in error(garbage)


def test_two_views_are_augmented_inside_the_loader_and_train(files):
    from structgen.models.elbo import Clamps, total_loss
    from structgen.models.objective import Contrastive, FullTreeObjective
    from structgen.models.treevae import ModelSpec, TreeVAE

    ds = files["colour"]
    x, y, idx = next(iter(_loader(files["colour_path"], batch_size=8, seed=2, two_views=True)))
    assert x.shape == (16, 3, 32, 32) and y.shape == idx.shape == (8,)
    assert 0 <= x.min() and x.max() <= 1
    original = torch.from_numpy(ds.images[idx.numpy()]).float() / 255
    assert not torch.allclose(x[:8], x[8:]) and not torch.allclose(x[:8], original)
    cfg = load_config("configs/cifar10.yml")
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec.from_config(cfg.model, (3, 32, 32), contrastive=True))
    contrastive = Contrastive(cfg.training.aug_decisions_weight, cfg.training.augmentation_method)
    terms = FullTreeObjective(model, Clamps.from_config(cfg.training), contrastive)(x)
    assert terms["aug"].item() > 0 and torch.isfinite(total_loss(terms, 0.01, terms["aug"]))


def test_a_treevae_train_step_consumes_make_loader_batches(files):
    from structgen.models.elbo import Clamps, total_loss
    from structgen.models.objective import FullTreeObjective
    from structgen.models.treevae import ModelSpec, TreeVAE

    ds = files["grey"]
    cfg = load_config("configs/digits.yml", ["data.loader=ffcv", f"data.ffcv_dir={files['dir']}",
                                              "data.ffcv_workers=1"])
    loader = make_loader(cfg.data, ds.images, ds.labels, BS, seed=4)
    assert isinstance(loader, FFCVLoader)
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec.from_config(cfg.model, (1, 28, 28)))
    objective = FullTreeObjective(model, Clamps.from_config(cfg.training))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    x, _, _ = next(iter(loader))
    loss = total_loss(objective(x), 0.1)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # another run's arrays (a different subset) are refused, with the command for them
    other = load_config(None, ["data.dataset=digits", "data.loader=ffcv", f"data.ffcv_dir={files['dir']}",
                               "data.train_subset=100"])
    with pytest.raises(DataError, match="count 400, expected count 100.*--set data.train_subset=100"):
        make_loader(other.data, ds.images[:100], ds.labels[:100], BS)
    with pytest.raises(DataError, match="different images"):
        make_loader(cfg.data, ds.images[::-1], ds.labels[::-1], BS)
    memory = make_loader(load_config("configs/digits.yml").data, ds.images, ds.labels, BS, seed=4, two_views=True)
    assert isinstance(memory.loader, TensorLoader) and next(iter(memory))[0].shape == (2 * BS, 1, 28, 28)


def test_prepare_data_writes_the_files_a_run_reads(tmp_path, capsys):
    from structgen.cli import main
    from structgen.data.run_data import load_run_data

    sets = ["--set", "data.train_subset=300", "--set", "data.test_subset=200"]
    assert main(["prepare-data", "--dataset", "digits", "--format", "ffcv", "--ffcv-dir", str(tmp_path),
                 "--workers", "1", *sets]) == 0
    assert "digits: OK" in capsys.readouterr().out
    cfg = load_config(None, ["data.dataset=digits", "data.loader=ffcv", f"data.ffcv_dir={tmp_path}",
                             "data.ffcv_workers=1", "data.train_subset=300", "data.test_subset=200"])
    data = load_run_data(cfg)
    test = make_loader(cfg.data, data.test.images, data.test.labels, 50, split="test", shuffle=False, drop_last=False)
    x, y, idx = _all(test)
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(data.test.images))
    meta = json.loads(sidecar_path(beton_path(tmp_path, "digits", "train")).read_text())
    assert meta["count"] == 300 and meta["shape"] == [1, 28, 28] and "data.train_subset=300" in meta["rebuild"]


def _ddp_worker(rank, world_size, port, path, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        loader = FFCVLoader(path, BS, seed=9, rank=dist.get_rank(), world_size=dist.get_world_size(),
                            num_workers=1)
        idx = torch.cat([i for _, _, i in loader])
        gathered = [torch.empty_like(idx) for _ in range(world_size)]
        dist.all_gather(gathered, idx)                   # the ranks agree on batch counts or this hangs
        if rank == 0:
            torch.save({"idx": gathered, "batches": len(loader)}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_read_disjoint_shards_under_gloo(files, tmp_path):
    port = free_loopback_port()
    out = tmp_path / "gathered.pt"
    # fork, not spawn: the children reuse this process's imports and compiled pipeline (saves ~20 s)
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, port, str(files["grey_path"]), str(out)),
                                          nprocs=2, start_method="fork")
    got = torch.load(out)
    a, b = (g.numpy() for g in got["idx"])
    assert len(a) == len(b) == got["batches"] * BS == 400 // 2 // BS * BS
    assert not set(a) & set(b)
    single = [_loader(files["grey_path"], seed=9, rank=r, world_size=2).epoch_indices()[: len(a)] for r in range(2)]
    assert np.array_equal(single[0], a) and np.array_equal(single[1], b)


def test_importing_structgen_data_does_not_import_ffcv():
    code = ("import sys, structgen.data, structgen.data.loaders, structgen.data.ffcv_loader, structgen.data.ffcv_files;"
            "assert 'ffcv' not in sys.modules and 'numba' not in sys.modules, 'ffcv imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
