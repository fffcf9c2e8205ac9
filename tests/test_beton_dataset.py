"""Dataset ``beton``: a .beton file as a run's data, read on demand (a set larger than memory).

The files are real FFCV files written by ``prepare-data``; a run on them is compared, weight for
weight, with the run that loads the same images into memory. Memory and speed as the set grows
to millions of images are measured by benchmarks/large_data.py, not here.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from structgen.config import ConfigError, load_config
from structgen.data import DataError, load_split
from structgen.data.beton_images import BetonImages
from structgen.data.ffcv_files import beton_path, fingerprint, write_beton
from structgen.data.loaders import make_loader
from structgen.data.memory_fit import GIB, available_memory, check_fits_in_memory
from structgen.data.memory_loader import TensorLoader

SUBSET = ["data.train_subset=192", "data.test_subset=64"]
TINY_RUN = ["run.progress=plain", "run.threads=1", "data.ffcv_workers=1", "training.batch_size=64",
            "training.num_epochs=2", "training.initial_depth=2", "training.grow=false", "training.prune=false",
            "training.num_epochs_finetuning=0", "evaluation.baselines=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """digits' train and test subsets written by `structgen prepare-data`, and the arrays they hold."""
    from structgen.cli import main
    from structgen.data.run_data import load_run_data

    folder = tmp_path_factory.mktemp("beton")
    sets = [a for s in SUBSET for a in ("--set", s)]
    assert main(["prepare-data", "--dataset", "digits", "--format", "ffcv", "--ffcv-dir", str(folder),
                 "--workers", "1", *sets]) == 0
    data = load_run_data(load_config(None, ["data.dataset=digits", *SUBSET]))
    return {"dir": folder, "prefix": folder / "digits", "data": data}


def _beton_cfg(files, *extra):
    return load_config(None, ["data.dataset=beton", f"data.path={files['prefix']}", *extra])


def test_beton_images_read_exactly_the_written_arrays_by_any_index(files):
    want = files["data"].train
    ds = load_split("beton", "train", data_cfg=_beton_cfg(files).data)
    images = ds.images
    assert isinstance(images, BetonImages) and images.shape == want.images.shape and len(ds) == len(want)
    assert images.dtype == np.uint8 and images.ndim == 4
    assert np.array_equal(ds.labels, want.labels) and ds.class_names == want.class_names
    assert np.array_equal(np.asarray(images), want.images)
    rows = np.array([5, 0, 191, 5])
    assert np.array_equal(images[rows], want.images[rows])
    assert np.array_equal(images[torch.from_numpy(rows)], want.images[rows])
    assert np.array_equal(images[10:20], want.images[10:20]) and np.array_equal(images[-1], want.images[-1])
    mask = want.labels == 3
    assert np.array_equal(images[mask], want.images[mask])
    with pytest.raises(IndexError):
        images[[192]]
    # another process (a Ray worker, a forked loader) gets the same reader without the open file
    copy = pickle.loads(pickle.dumps(images))
    assert np.array_equal(copy[rows], want.images[rows])
    assert ds.fingerprint == f"beton {fingerprint(want.images, want.labels)}"


def test_a_generated_source_is_written_without_an_image_set(files, tmp_path):
    """write_beton takes anything with read(start, stop): the large-data benchmark's generator."""
    want = files["data"].train

    class Doubled:
        name, split, class_names, shape = "gen", "train", want.class_names, want.images.shape[1:]
        count = 2 * len(want)

        def read(self, start, stop):
            rows = np.arange(start, stop) % len(want)
            return want.images[rows], want.labels[rows]

    path = write_beton(Doubled(), tmp_path / "gen-train.beton", num_workers=1)
    images = BetonImages(path)
    both = np.concatenate([want.images, want.images])
    assert np.array_equal(np.asarray(images), both)
    assert images.fingerprint == fingerprint(both, np.concatenate([want.labels, want.labels]))


def _batches(loader):
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in loader]


def test_streaming_serves_ffcvs_own_batches_without_mapping_the_file(files, tmp_path):
    """ffcv_streaming: each batch pread into place gives FFCV's decoders the bytes its map gives,
    for shuffled, sharded and subset orders; the file is never mapped into the process."""
    from structgen.data.ffcv_loader import FFCVLoader

    path = tmp_path / "only-streamed-train.beton"          # a file no mapping loader has opened
    for suffix in ("", ".json"):
        Path(f"{path}{suffix}").write_bytes(Path(f"{files['prefix']}-train.beton{suffix}").read_bytes())
    for kw in ({"seed": 3}, {"seed": 3, "rank": 1, "world_size": 2, "drop_last": False},
               {"indices": np.arange(10, 150), "shuffle": False, "drop_last": False}):
        streamed = _batches(FFCVLoader(path, 32, num_workers=1, stream=True, **kw))
        assert str(path) not in Path("/proc/self/maps").read_text()
        mapped = _batches(FFCVLoader(f"{files['prefix']}-train.beton", 32, num_workers=1, **kw))
        assert len(streamed) == len(mapped) > 0
        for a, b in zip(streamed, mapped):
            assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_bad_beton_setups_are_refused_naming_what(files, tmp_path):
    with pytest.raises(ConfigError, match="needs data.path"):
        load_config(None, ["data.dataset=beton"])
    with pytest.raises(ConfigError, match="data.train_subset"):
        _beton_cfg(files, "data.train_subset=10")
    with pytest.raises(DataError, match=r"nothing-train\.beton: does not exist"):
        load_config(None, ["data.dataset=beton", f"data.path={tmp_path / 'nothing'}"])
    # only a train file: the test split's file is named
    train = beton_path(files["dir"], "digits", "train")
    lone = tmp_path / "lone"
    for suffix in ("", ".json"):
        Path(f"{lone}-train.beton{suffix}").write_bytes(Path(f"{train}{suffix}").read_bytes())
    cfg = load_config(None, ["data.dataset=beton", f"data.path={lone}"])
    with pytest.raises(DataError, match=r"lone-test\.beton: does not exist"):
        load_split("beton", "test", data_cfg=cfg.data)
    # JPEG files cannot be indexed byte for byte
    jpg = write_beton(files["data"].test, tmp_path / "j-test.beton", image_mode="jpg", num_workers=1)
    with pytest.raises(DataError, match="raw pixels only"):
        BetonImages(jpg)


def test_the_memory_loader_refuses_a_set_that_does_not_fit(files):
    cfg = _beton_cfg(files, "data.memory_limit_gb=0.0001")        # 107 kB; the set is 150 kB
    ds = load_split("beton", "train", data_cfg=cfg.data)
    with pytest.raises(DataError, match=r"do not fit in memory \(data.memory_limit_gb = 0.0001\).*data.loader=ffcv"):
        make_loader(cfg.data, ds.images, ds.labels, 32)
    ok = _beton_cfg(files, "data.memory_limit_gb=1").data
    loader = make_loader(ok, load_split("beton", "train", data_cfg=ok).images, ds.labels, 32)
    assert isinstance(loader, TensorLoader) and torch.equal(loader.images, torch.from_numpy(files["data"].train.images))


def test_available_memory_is_what_the_machine_reports():
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    free = available_memory()
    assert 0 < free <= total
    check_fits_in_memory(1 << 20, "one MiB")                    # fits anywhere
    with pytest.raises(DataError, match="half of the"):
        check_fits_in_memory(total, "all of memory")
    assert GIB == 2**30


def _weights(run_dir):
    state = torch.load(Path(run_dir) / "checkpoints" / "final.pt", map_location="cpu", weights_only=True)["model"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


@pytest.mark.slow
def test_a_run_on_the_file_trains_what_the_run_on_the_arrays_trains(files, tmp_path):
    """dataset beton streamed through FFCV == the same images held by the run (the FFCV loader
    reading the prepare-data file it was checked against) == read into memory; assign over the
    file streams the same leaves as over the arrays."""
    from structgen.api import assign, train_tree

    runs = []
    for name, data in (("arrays", ["data.dataset=digits", *SUBSET, "data.loader=ffcv", f"data.ffcv_dir={files['dir']}"]),
                       ("file", ["data.dataset=beton", f"data.path={files['prefix']}", "data.loader=ffcv"]),
                       ("file-memory", ["data.dataset=beton", f"data.path={files['prefix']}", "data.loader=memory"])):
        run_dir, result = train_tree(load_config(None, [*TINY_RUN, *data, f"run.runs_dir={tmp_path}",
                                                        f"run.name={name}"]))
        runs.append((run_dir, result))
    (a, ra), (b, rb), (c, _) = runs
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys() == wc.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
        assert torch.equal(wa[k], wc[k]), k
    assert ra["acc"] == rb["acc"] and ra["elbo"] == pytest.approx(rb["elbo"], abs=1e-4)
    streamed = assign(b, f"{files['prefix']}-train.beton")
    held = assign(b, files["data"].train.images)
    assert len(streamed.names) == 192 and streamed.names[0].endswith("digits-train.beton#0")
    assert torch.allclose(torch.as_tensor(streamed.probs), torch.as_tensor(held.probs), atol=1e-6)
    by_dataset = assign(b, split="all")                        # the run's own data: both files in turn
    assert len(by_dataset.names) == 192 + 64
    assert torch.allclose(torch.as_tensor(by_dataset.probs[:192]), torch.as_tensor(held.probs), atol=1e-6)
