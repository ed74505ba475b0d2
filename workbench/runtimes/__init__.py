"""Runtimes as plug-ins, behind one Session interface.

A runtime is one module in this package (or any module named in ``RUNTIME_MODULES`` or the
``WORKBENCH_PLUGINS`` environment variable) that calls :func:`register` with a
:class:`Runtime`: its name, the artifact formats it reads, its providers/devices, the options it
reads (with their allowed values and defaults), how to open a session, what
``workbench export`` writes into ``predict.py`` to open the artifact the same way, and what
``workbench doctor`` says about it. Config validation, trial parameters, the sweep's
conditional space, bundles and the doctor are all derived from the registry: adding a runtime
edits nothing else.

``load(params, artifact)`` returns a :class:`Session`: ``run(batch) -> outputs`` for a fixed
numpy batch, ``providers`` (what is actually active, checked after creation), ``load_ms`` and
``close()``. A requested provider or device that is not active makes the trial *pruned with
the reason*: a silent fallback to CPU would make the numbers a lie.
"""

from workbench.runtimes.base import RUNTIME_MODULES, Runtime, Session, get, load, register, registered, why_not

__all__ = ["RUNTIME_MODULES", "Runtime", "Session", "get", "load", "register", "registered", "why_not"]
