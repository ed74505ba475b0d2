"""The sweep: an experiment's study run (or continued) trial after trial, then decided and reported.

``loop`` (the ask -> notebook -> tell loop, :func:`run` and :func:`work`), ``notebook``
(papermill on kernels started ahead), ``study`` (sampler, storage URL), ``space`` (the search
space, grid and automatic), ``baselines``, ``preflight`` (checks before any work), ``dask``
(trial notebooks on a Dask cluster; imported only by ``workbench sweep --dask``).
"""

from workbench.sweep.loop import run, work

__all__ = ["run", "work"]
