"""The builtin engine: ``python -m workbench.serve.app`` in the workbench's own environment."""

from __future__ import annotations

import json
import sys

from workbench.serve.base import Engine


class BuiltinEngine(Engine):
    name = "builtin"

    def command(self) -> list[str]:
        o = self.options
        opts = {"name": o.name, "max_batch_size": o.max_batch_size, "max_queue_delay_ms": o.max_queue_delay_ms,
                "batch_policy": o.batch_policy, "max_queue": o.max_queue, "instances": o.instances,
                "threads": o.threads, "trust_model_code": o.trust_model_code, "grpc_port": o.grpc_port,
                "auth_token_env": o.auth_token_env, **o.extra}
        return [sys.executable, "-m", "workbench.serve.app", str(self.bundle), "--host", o.host,
                "--port", str(o.port), "--options", json.dumps(opts)]
