"""torch's CPU thread count is process-wide: code that sets it for its own work gives it back."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def keep_torch_threads():
    """Restore torch's thread count on exit, also after an exception. FFCV sets it (to 1 on import,
    to its worker count per epoch), and the API's entry points apply `run.threads`: as a decorator
    (`@keep_torch_threads()`) it gives a caller, a notebook or a test session, its own count back."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
