"""The numpy objects a BackdoorBench record legitimately pickles, for ``torch.load(weights_only=True)``.

Standalone on purpose (it imports numpy only): ``burn_plugin.fileio`` uses it for every safe load, and
``backdoorbench/bb_runner.py``, which runs inside BackdoorBench's own interpreter where ``burn_plugin`` may not
be installed, loads this file by its path for its ``torch-load`` fix.
"""
from __future__ import annotations


def numpy_safe_globals() -> list:
    """Arrays, dtypes and scalars, under both the numpy-1 ``numpy.core`` and numpy-2 ``numpy._core``
    module names, in the form ``torch.serialization.safe_globals`` takes."""
    import numpy as np
    import numpy.dtypes as npd

    try:
        from numpy._core import multiarray as ma  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray as ma

    entries: list = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((ma._reconstruct, f"{mod}._reconstruct"))
        entries.append((ma.scalar, f"{mod}.scalar"))
    entries.append((np.ndarray, "numpy.ndarray"))
    entries.append((np.dtype, "numpy.dtype"))
    for name in dir(npd):
        obj = getattr(npd, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            entries.append(obj)
    return entries
