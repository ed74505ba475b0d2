"""Serving engines behind one small interface: ``start``, ``ready``, ``stop``, ``metrics``.

Every engine serves a bundle (``workbench export``) over the Open Inference Protocol (v2) REST
API, as a subprocess in a process group of its own, so stopping it - on success, failure,
timeout, or when the caller is killed (``--parent-pid`` watch) - leaves nothing behind.
Engines register by name like runtimes: ``builtin`` (Starlette/uvicorn + dynamic batcher, in
the workbench's environment) and ``kserve`` (KServe's ModelServer, in ``.venv-kserve``).
Adding one is a module with an ``Engine`` subclass and a line in ``ENGINES`` and ``ENGINE_OPTIONS``
(``workbench.config.parameters``: the search space reads them before anything is served).
"""

from workbench.serve.base import Engine, EngineError, ServeOptions, engine, free_port, watch_parent

__all__ = ["Engine", "EngineError", "ServeOptions", "engine", "free_port", "watch_parent"]
