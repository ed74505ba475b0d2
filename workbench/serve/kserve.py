"""The kserve engine: KServe's ModelServer in its own environment, and the InferenceService
manifest that runs a bundle on Kubernetes (``workbench export --engine kserve``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from workbench.export.bundle import open_bundle
from workbench.serve.base import Engine, EngineError

ROOT = Path(__file__).resolve().parents[2]


def python() -> Path:
    """The kserve environment's interpreter: ``$WORKBENCH_KSERVE_PYTHON`` or ``.venv-kserve``."""
    return Path(os.environ.get("WORKBENCH_KSERVE_PYTHON") or ROOT / ".venv-kserve" / "bin" / "python")


def unavailable_reason() -> str | None:
    if not python().exists():
        return f"the kserve environment is missing ({python()}; `make setup` creates .venv-kserve)"
    return None


def available() -> bool:
    return unavailable_reason() is None


class KServeEngine(Engine):
    name = "kserve"

    def command(self) -> list[str]:
        o = self.options
        if o.grpc_port is not None:
            raise EngineError("--grpc-port: the builtin engine's; the kserve engine serves REST only "
                              "(kserve_main turns KServe's own gRPC server off)")
        reason = unavailable_reason()
        if reason:
            raise EngineError(f"--engine kserve: {reason}")
        cmd = [str(python()), "-m", "workbench.serve.kserve_main", str(self.bundle), "--host", o.host,
               "--http_port", str(o.port), "--model_name", o.name, "--workers", "1"]
        if o.threads:
            cmd += ["--threads", str(o.threads)]
        if o.trust_model_code:
            cmd += ["--trust-model-code"]
        if o.extra.get("limits"):  # guard.Limits fields, as the builtin engine takes them
            cmd += ["--limits", json.dumps(o.extra["limits"])]
        if o.auth_token_env:
            cmd += ["--auth-token-env", o.auth_token_env]  # the variable's name: the token stays in the environment
        return cmd

    def metrics(self) -> dict[str, float]:
        return {}  # KServe's /metrics has its own names; the monitor reads CPU and RSS from the process


# What both manifests start with: the InferenceService and its one predictor container.
_CONTAINER_HEAD = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: {max_replicas}
    containers:
      - name: kserve-container
        image: {image}
"""

# What every predictor container of ours has: the v2 port, its readiness probe, and CPU as many
# cores as the threads it was measured with.
_CONTAINER_TAIL = """\
        ports:
          - containerPort: 8080
            protocol: TCP
        readinessProbe:
          httpGet:
            path: /v2/models/{name}/ready
            port: 8080
        resources:
          requests:
            cpu: "{threads}"
            memory: 512Mi
          limits:
            cpu: "{threads}"
            memory: 1Gi
"""

MANIFEST = """# KServe InferenceService for this bundle (written by `workbench export --engine kserve`).
# 1. Build an image with the workbench and .venv-kserve's packages (kserve 0.21, the runtime), e.g.
#    FROM python:3.11-slim; pip install "kserve>=0.21,<0.22" {runtime_pkg}; COPY workbench /app/workbench
# 2. Upload this bundle directory to STORAGE_URI; KServe's storage initializer mounts it on /mnt/models.
# 3. kubectl apply -f inferenceservice.yaml; the endpoint speaks the same v2 protocol as `workbench serve`.
""" + _CONTAINER_HEAD + """        command: ["python", "-m", "workbench.serve.kserve_main", "/mnt/models",
                  "--host", "0.0.0.0", "--http_port", "8080", "--model_name", "{name}", "--threads", "{threads}"]
        env:
          - name: STORAGE_URI
            value: {storage_uri}
          - name: PYTHONPATH
            value: /app
""" + _CONTAINER_TAIL

IMAGE_MANIFEST = """# KServe InferenceService for the image `workbench image --tag {image}` built from this bundle.
# The image holds the bundle and serves it with the builtin engine (`workbench serve`) on $PORT.
# 1. Push it where the cluster pulls from (podman push {image} REGISTRY/NAME) and put that name below.
# 2. kubectl apply -f inferenceservice.yaml; the endpoint speaks the same v2 protocol as `workbench serve`.
""" + _CONTAINER_HEAD + """        args: ["--name", "{name}"]
        env:
          - name: PORT
            value: "8080"
""" + _CONTAINER_TAIL

RUNTIME_PACKAGES = {"onnxruntime": '"onnxruntime>=1.32,<1.33"', "openvino": '"openvino>=2026.4,<2026.5"',
                    "litert": '"ai-edge-litert>=2.3,<2.4"', "tensorflow": '"tensorflow>=2.21,<2.22"'}


def manifest_path(bundle: str | Path) -> Path:
    """``inferenceservice.yaml`` in the bundle, refused when a file of that name is there that the
    workbench did not write (its first line is not one of the manifests' own)."""
    path = Path(bundle) / "inferenceservice.yaml"
    if path.is_file() and not path.read_text(errors="replace").startswith("# KServe InferenceService for"):
        raise EngineError(f"{path}: exists and was not written by workbench; move it away to write the manifest")
    return path


def write_inferenceservice(bundle: str | Path, name: str = "model", image: str | None = None,
                           storage_uri: str = "s3://YOUR-BUCKET/path/to/this/bundle", max_replicas: int = 4) -> Path:
    """``inferenceservice.yaml`` in the bundle: how a user who outgrows one machine scales out.

    Without ``image``: KServe's ModelServer (the kserve engine) in an image the user builds, the
    bundle fetched from ``storage_uri``. With ``image`` (a ``workbench image`` tag): that image,
    which carries the bundle and serves it with the builtin engine."""
    path, b = manifest_path(bundle), open_bundle(bundle)
    k8s_name = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "model"
    template = MANIFEST if image is None else IMAGE_MANIFEST
    text = template.format(name=k8s_name, image=image or "workbench-kserve:latest", storage_uri=storage_uri,
                           max_replicas=max_replicas, threads=b.params.threads,
                           runtime_pkg=RUNTIME_PACKAGES.get(b.params.runtime, ""))
    path.write_text(text)
    return path
