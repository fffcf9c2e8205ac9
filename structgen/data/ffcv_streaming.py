"""An FFCV memory manager that reads each batch's samples from the file, for sets larger than memory.

FFCV's own ``os_cache`` manager maps the whole file and reads through the map. Every page it
touches stays in the process's resident memory, and on current kernels a fault maps a whole
page-cache folio (up to 2 MiB) around the sample: five shuffled batches of a 1.4 GB file
mapped 0.9 GB (measured; ``MADV_RANDOM`` did not help, unmapping every 32 batches was too late).
Its base class also builds Python sets per sample (``sample_to_pages``; ~0.7 kB an image, 0.4
GB at 600k images) that only its process cache and quasi-random order use.

``StreamingMemory`` instead gives the decoders an anonymous mapping as large as the file, which
costs nothing until written: before batch ``b`` is decoded, the pages of batch ``b - 1`` are
released and ``b``'s samples are ``pread`` into their places (FFCV decodes one batch after the
other in one thread, so ``b - 1`` is done by then). The decoders see the same bytes at the same
addresses as through FFCV's map, so batches are identical; resident memory holds one batch of
raw samples. It serves files whose samples have one allocation each (structgen's: the image;
labels and indices live in the metadata table).
"""
from __future__ import annotations

import functools
import mmap
import os
from contextlib import contextmanager

import numpy as np

_PAGE = mmap.PAGESIZE


@functools.lru_cache(maxsize=None)
def streaming_memory_classes() -> dict:
    """The manager and its per-epoch context; defined on first use (they subclass FFCV's)."""
    from ffcv.memory_managers import OSCacheManager
    from ffcv.memory_managers.base import MemoryContext

    class StreamingContext(MemoryContext):
        def __init__(self, manager, batches):
            self.manager, self.batches = manager, batches
            self.area = self.buffer = self.fd = None
            self.loaded: list[tuple[int, int]] = []

        @property
        def state(self):
            return (self.buffer, self.manager.ptrs, self.manager.sizes)

        def __enter__(self):
            size = os.path.getsize(self.manager.reader.file_name)
            self.area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.buffer = np.frombuffer(self.area, dtype=np.uint8)
            self.fd = os.open(self.manager.reader.file_name, os.O_RDONLY)
            return super().__enter__()

        def start_batch(self, batch: int):
            for start, stop in self.loaded:            # the previous batch is decoded: give its pages back
                self.area.madvise(mmap.MADV_DONTNEED, start, stop - start)
            self.loaded = []
            view = memoryview(self.area)
            ptrs, sizes = self.manager.sample_ptr, self.manager.sample_size
            for sample in self.batches[batch]:
                ptr, size = int(ptrs[sample]), int(sizes[sample])
                if os.preadv(self.fd, [view[ptr:ptr + size]], ptr) != size:
                    raise OSError(f"{self.manager.reader.file_name}: sample {int(sample)} is cut short")
                self.loaded.append((ptr - ptr % _PAGE, -(-(ptr + size) // _PAGE) * _PAGE))
            view.release()
            return super().start_batch(batch)

        def __exit__(self, *exc):
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.buffer = None            # the decoders' state goes with the epoch iterator
            return super().__exit__(*exc)

    class StreamingMemory(OSCacheManager):
        """OSCacheManager's reader and state types over StreamingContext's buffer."""

        def __init__(self, reader):       # not MemoryManager.__init__: no per-sample Python sets
            self.reader = reader
            table = reader.alloc_table
            if len(table) != reader.num_samples or len(np.unique(table["sample_id"])) != len(table):
                raise ValueError(f"{reader.file_name}: streaming needs one allocation per sample, found "
                                 f"{len(table)} for {reader.num_samples} samples")
            order = np.argsort(table["ptr"])
            self.ptrs = np.ascontiguousarray(table["ptr"][order])
            self.sizes = np.ascontiguousarray(table["size"][order])
            self.sample_ptr = np.empty(reader.num_samples, dtype=np.uint64)
            self.sample_size = np.empty(reader.num_samples, dtype=np.uint64)
            self.sample_ptr[table["sample_id"]] = table["ptr"]
            self.sample_size[table["sample_id"]] = table["size"]

        def schedule_epoch(self, batches):
            return StreamingContext(self, batches)

    return {"StreamingMemory": StreamingMemory}


@contextmanager
def streaming_loader_memory():
    """While a Loader is built inside it, FFCV gives it a StreamingMemory manager."""
    import ffcv.loader.loader as loader_module

    original = loader_module.OSCacheManager
    loader_module.OSCacheManager = streaming_memory_classes()["StreamingMemory"]
    try:
        yield
    finally:
        loader_module.OSCacheManager = original
