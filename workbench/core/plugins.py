"""Where plug-ins come from: module names, imported once; no entry points.

The runtime and variant registries each keep a module-level list of module names
(``runtimes.RUNTIME_MODULES``, ``variants.TRANSFORM_MODULES``); importing such a module
registers what it defines (``runtimes.register(...)``, ``variants.register(...)``).
``WORKBENCH_PLUGINS`` (comma-separated module names) adds modules of one's own: it is read by
every process, so the trial kernels papermill starts see the same plug-ins as the sweep.
"""

from __future__ import annotations

import importlib
import os

from workbench.core.errors import ConfigError

ENV = "WORKBENCH_PLUGINS"


def import_modules(names: list[str]) -> None:
    """Import ``names`` and the modules named in ``WORKBENCH_PLUGINS`` (cached by Python)."""
    extra = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    for name in [*names, *extra]:
        try:
            importlib.import_module(name)
        except ImportError as err:
            if name in extra and getattr(err, "name", None) == name:
                raise ConfigError(f"{ENV}: no module named {name}") from None
            raise
