"""TensorLoader: sharding like DistributedSampler, seeded epoch order, resume, subsets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from structgen.data import TensorLoader

N = 103  # prime, so no world size or batch size divides it evenly


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 1, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=N)
    return images, labels


def _served(loader) -> list[int]:
    return torch.cat([idx for _, _, idx in loader]).tolist()


def _all_ranks(data, world_size, batch_size, epoch=0, **kw):
    loaders = [TensorLoader(*data, batch_size, rank=r, world_size=world_size, **kw)
               for r in range(world_size)]
    for ld in loaders:
        ld.set_epoch(epoch)
    return loaders


@pytest.mark.parametrize("world_size", [2, 3])
def test_drop_last_shards_are_disjoint_and_equal(data, world_size):
    loaders = _all_ranks(data, world_size, batch_size=8, drop_last=True)
    served = [_served(ld) for ld in loaders]
    counts = [sum(1 for _ in ld) for ld in loaders]
    assert len(set(counts)) == 1 and counts[0] == len(loaders[0]) == (N // world_size) // 8
    flat = sum(served, [])
    assert len(flat) == len(set(flat))  # disjoint across ranks and within a rank
    assert all(0 <= i < N for i in flat)


@pytest.mark.parametrize("world_size", [2, 3])
def test_keep_last_shards_are_complete_and_equal(data, world_size):
    loaders = _all_ranks(data, world_size, batch_size=8, drop_last=False)
    served = [_served(ld) for ld in loaders]
    assert len({len(s) for s in served}) == 1  # equal samples per rank (padded by wrapping)
    assert len({sum(1 for _ in ld) for ld in loaders}) == 1
    assert set(sum(served, [])) == set(range(N))
    # padding only repeats what is needed to even out the ranks
    assert len(sum(served, [])) - N < world_size


def test_batches_carry_the_right_pixels_and_labels(data):
    images, labels = data
    loader = TensorLoader(images, labels, 10, drop_last=False, seed=5)
    sizes = []
    for x, y, idx in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and idx.dtype == torch.int64
        assert x.shape[1:] == (1, 4, 4)
        np.testing.assert_allclose(x.numpy(), images[idx.numpy()] / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(y.numpy(), labels[idx.numpy()])
        sizes.append(len(x))
    assert sizes == [10] * 10 + [3] and len(loader) == 11


def test_order_is_a_function_of_seed_and_epoch(data):
    a, b = TensorLoader(*data, 8, seed=1), TensorLoader(*data, 8, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert _served(a) == _served(b)
    a.set_epoch(4)
    b.set_epoch(5)
    assert _served(a) != _served(b)
    c = TensorLoader(*data, 8, seed=2)
    c.set_epoch(4)
    a.set_epoch(4)
    assert _served(a) != _served(c)
    unshuffled = TensorLoader(*data, 8, shuffle=False, drop_last=False)
    assert _served(unshuffled) == list(range(N))


def test_state_dict_resumes_the_following_epoch(data):
    run = TensorLoader(*data, 8, seed=7, rank=1, world_size=2)
    run.set_epoch(2)
    _served(run)                 # finish epoch 2
    state = run.state_dict()     # checkpoint between epochs
    expected = _served(run)      # what epoch 3 serves
    resumed = TensorLoader(*data, 8, seed=0, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert state == {"epoch": 3, "seed": 7}
    assert _served(resumed) == expected


def test_an_unfinished_pass_does_not_advance_the_epoch(data):
    loader = TensorLoader(*data, 8, seed=3)
    first = next(iter(loader))[2].tolist()
    assert loader.state_dict()["epoch"] == 0
    assert next(iter(loader))[2].tolist() == first


@pytest.mark.parametrize("world_size", [1, 3])
def test_subset_indices_are_respected(data, world_size):
    subset = np.arange(5, N, 4)  # 25 indices
    loaders = _all_ranks(data, world_size, batch_size=4, drop_last=False, indices=subset)
    served = sum((_served(ld) for ld in loaders), [])
    assert set(served) == set(subset.tolist())
    dropped = _all_ranks(data, world_size, batch_size=4, drop_last=True, indices=subset)
    served = sum((_served(ld) for ld in dropped), [])
    assert set(served) <= set(subset.tolist()) and len(served) == len(set(served))


def test_bad_sizes_are_explained(data):
    with pytest.raises(ValueError, match=r"batch_size 60 .* 51 samples"):
        TensorLoader(*data, 60, world_size=2, rank=0, drop_last=True)
    assert len(TensorLoader(*data, 60, world_size=2, rank=1, drop_last=False)) == 1
    with pytest.raises(ValueError, match="rank 2"):
        TensorLoader(*data, 8, world_size=2, rank=2)
    with pytest.raises(ValueError, match="indices"):
        TensorLoader(*data, 8, indices=[0, N])
    with pytest.raises(TypeError, match="uint8"):
        TensorLoader(data[0].astype(np.float32), data[1], 8)


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_set_too_small_for_min_batches_is_passed_over_again_each_pass_reshuffled(data, world_size):
    subset = np.arange(0, N, 3)                       # 35 indices
    plain = _all_ranks(data, world_size, batch_size=4, seed=6, epoch=2, indices=subset)
    longer = _all_ranks(data, world_size, batch_size=4, seed=6, epoch=2, indices=subset, min_batches=10)
    share = len(subset) // world_size                 # a rank's samples in one pass (drop_last)
    passes = longer[0].passes
    assert passes == -(-10 * 4 // share) > 1
    runs = []                                         # runs[rank][pass]: that rank's indices in that pass
    for one, more in zip(plain, longer):
        order, served = more.epoch_indices().tolist(), _served(more)
        assert len(one) < 10 <= len(more) and len(served) == len(more) * 4 and served == order[:len(served)]
        assert len(order) == passes * share
        runs.append([order[p * share:(p + 1) * share] for p in range(passes)])
        assert runs[-1][0] == one.epoch_indices().tolist()   # the first pass is the one-pass order
    for p in range(passes):                           # every pass deals the subset out to the ranks once
        dealt = sum((r[p] for r in runs), [])
        assert len(dealt) == len(set(dealt)) == share * world_size and set(dealt) <= set(subset.tolist())
    assert len({tuple(runs[0][p]) for p in range(passes)}) == passes   # each pass in an order of its own
    # a set big enough for min_batches is served as without it
    big = TensorLoader(*data, 4, seed=6, min_batches=10)
    assert big.passes == 1 and _served(big) == _served(TensorLoader(*data, 4, seed=6))


def test_more_ranks_than_samples_still_pads(data):
    images, labels = data
    loaders = [TensorLoader(images[:2], labels[:2], 1, rank=r, world_size=5, drop_last=False)
               for r in range(5)]
    served = sum((_served(ld) for ld in loaders), [])
    assert len(served) == 5 and set(served) == {0, 1}


def test_to_device_float_moves_uint8_and_scales_to_unit_range():
    from structgen.data.memory_loader import to_device_float

    batch = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    x = to_device_float(batch, "cpu")
    assert x.dtype == torch.float32 and torch.allclose(x, torch.tensor([[0.0, 0.2, 1.0]]))
    assert batch.dtype == torch.uint8 and batch[0, 2] == 255        # the source batch is left as it was


def test_loader_shares_the_training_array_it_is_given_instead_of_copying_it():
    """Every phase builds a loader over the same training set; none may hold a copy of it."""
    images = np.zeros((8, 1, 4, 4), dtype=np.uint8)
    loader = TensorLoader(images, np.arange(8), 4, indices=np.arange(4))    # a sub-tree's subset too
    assert np.shares_memory(loader.images.numpy(), images)
    images[3] = 255
    x, _, idx = next(iter(TensorLoader(images, np.arange(8), 8, shuffle=False)))
    assert x[3].min() == 1.0


def test_batches_are_plain_nchw_whatever_the_stored_strides():
    """Grey images made with ``[:, None]`` carry a channel stride that also reads as channels-last;
    a float batch of them must still be plain NCHW, or every convolution would run NHWC."""
    from structgen.data.memory_loader import to_device_float

    grey = np.arange(6 * 5 * 5, dtype=np.uint8).reshape(6, 5, 5)[:, None]
    loader = TensorLoader(grey, np.zeros(6, dtype=np.int64), batch_size=4, shuffle=False)
    x, _, _ = next(iter(loader))
    plain = (25, 25, 5, 1)
    assert torch.from_numpy(grey)[:4].float().stride() != plain      # what torch alone would give
    assert x.stride() == plain
    assert torch.equal(x, torch.from_numpy(grey[:4]).float() / 255)
    assert to_device_float(torch.from_numpy(grey)[:4], "cpu").stride() == plain
