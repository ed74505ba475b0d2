"""``workbench image BUNDLE --tag TAG``: an OCI image, built with podman, that serves a bundle
with the builtin engine (``workbench serve``).

No image registry is reachable from the machines this runs on, so nothing is pulled: the base
is a Debian minbase root file system with python3 and python3-venv, made by ``mmdebstrap`` from
the machine's own apt sources and ``podman import``-ed once (1.5-2.5 minutes on a busy 2-core machine), then reused by
every build (:data:`BASE`; ``podman rmi`` it to rebuild). The Python packages are downloaded on
the host by the host's own pip, so the image gets exactly the registries, certificates and
constraints the host is configured with, and the versions it runs (the bundle's
``requirements.txt`` plus the serving packages, every dependency pinned to the host's
version); the build installs them offline from that directory, mounted read-only for the build
only, so neither the wheels nor a certificate end up in the image. No TensorFlow unless the
bundle's runtime is TensorFlow: the workbench package is copied without its dependencies.

podman runs with runc and raised ulimits from a ``containers.conf`` the workbench writes into
its cache and points ``CONTAINERS_CONF`` at (crun fails here on setrlimit NOFILE and hybrid
cgroups), so nothing in /etc changes; build and run use the host network.

The entrypoint serves ``/bundle`` on ``$HOST`` (default 0.0.0.0) and ``$PORT`` (default 8080);
with ``$GRPC_PORT`` set it also passes ``--grpc-port``; arguments after the image name go to
``workbench serve`` (e.g. ``--max-batch-size 8``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

from workbench.core import cache
from workbench.core.errors import WorkbenchError
from workbench.export.bundle import MARKER, open_bundle

BASE_REPO = "localhost/workbench-base"  # podman rmi $(podman images -q localhost/workbench-base) removes them
BASE = BASE_REPO + ":{codename}-{key}"  # key: the recipe below and the apt sources
# minbase + python3 and python3-venv; /usr merged by mmdebstrap's hook (the usrmerge package would
# bring 47 MB of perl); no documentation, manual pages or translations (copyright kept)
MMDEBSTRAP = ("--variant=minbase", "--include=python3,python3-venv", "--format=tar", "--quiet",
              "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
              "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
              "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/info/*",
              "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/locale/locale.alias")
# what the builtin engine imports beyond the bundle's runtime and numpy (workbench/serve/app.py and
# what `workbench serve` loads on its way there)
SERVING_PACKAGES = ("starlette", "uvicorn", "uvloop", "httptools", "prometheus-client", "pydantic", "pyyaml",
                    "orjson", "grpcio", "protobuf")  # grpc*: `workbench serve --grpc-port` ($GRPC_PORT)
NOT_COPIED = (MARKER, "inferenceservice.yaml")  # bundle files that say nothing the server reads
CONTAINERS_CONF = """# written by `workbench image`; podman reads it through CONTAINERS_CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
# exec: the server is PID 1 and gets podman stop's SIGTERM (it drains in-flight requests)
ENTRYPOINT = ('exec python -m workbench.cli serve /bundle --host "${HOST:-0.0.0.0}" --port "${PORT:-8080}" '
              '${GRPC_PORT:+--grpc-port "$GRPC_PORT"} "$@"')
CONTAINERFILE = """FROM {base}
RUN apt-get clean && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /app/requirements.txt
# one layer: a venv, pip installing offline from the wheels mounted on /mnt (an empty directory of the
# base: the mount leaves nothing behind), then pip and setuptools removed
RUN python3 -m venv /opt/venv \\
    && /opt/venv/bin/pip install --no-index --find-links /mnt --no-cache-dir --no-compile \\
       --disable-pip-version-check -r /app/requirements.txt \\
    && /opt/venv/bin/python -m pip uninstall -q -y --disable-pip-version-check pip setuptools \\
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib
COPY workbench /app/workbench
RUN /opt/venv/bin/python -m compileall -q /app/workbench
COPY bundle /bundle
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/app \\
    HOST=0.0.0.0 PORT=8080 HOME=/tmp
LABEL org.opencontainers.image.title="workbench bundle" workbench.version="{version}" \\
    workbench.runtime="{runtime}"
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c", {entrypoint}, "workbench-serve"]
"""
# a podman image reference: lowercase name components separated by / (optionally a registry
# host[:port] first), an optional :tag
TAG = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
                 r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")


class ImageError(WorkbenchError):
    """``workbench image`` cannot start: a tool is missing, the tag or the bundle is wrong."""


class BuildFailed(ImageError):
    """podman, mmdebstrap or pip failed while building (the output says why)."""

    exit_code = 1


def missing_tool(*tools: str) -> str | None:
    """The first of ``tools`` not on PATH, or None."""
    return next((t for t in tools if shutil.which(t) is None), None)


def _require(*tools: str) -> None:
    tool = missing_tool(*tools)
    if tool:
        raise ImageError(f"{tool} is not installed (workbench image needs podman, runc and mmdebstrap: "
                         "apt-get install podman runc mmdebstrap)")


def podman_env() -> dict[str, str]:
    """The environment podman runs in: ``CONTAINERS_CONF`` naming the workbench's own
    containers.conf (runc, raised ulimits), unless the caller already set one."""
    env = dict(os.environ)
    if not env.get("CONTAINERS_CONF"):
        conf = cache.root() / "image" / "containers.conf"
        if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
            conf.parent.mkdir(parents=True, exist_ok=True)
            tmp = conf.with_name(f".containers.conf.{os.getpid()}")
            tmp.write_text(CONTAINERS_CONF)
            os.replace(tmp, conf)  # another build reading it never sees half a file
        env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """``podman ARGS`` with the workbench's containers.conf; output captured."""
    proc = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise BuildFailed(f"podman {args[0]} failed: {_last_line(proc.stderr or proc.stdout)}")
    return proc


def _run(cmd: list[str], out: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a long build step with its output in the file ``out``; returns (exit code, stderr's
    last line). Interrupted or timed out, the step gets SIGTERM and 30 s to clean up after
    itself (podman its build containers, mmdebstrap its mounts) before SIGKILL."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh, tempfile.TemporaryFile("w+") as err:
        # its own session: a Ctrl-C reaches this process only, which stops the step with SIGTERM
        proc = subprocess.Popen(cmd, stdout=fh, stderr=err, env=env, text=True, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        err.seek(0)
        text = err.read()
        fh.write(text)
    return code, _last_line(text)


def _podman_state() -> tuple[set[str], set[str]]:
    """The ids of podman's containers (build containers too) and of its untagged images."""
    containers = podman("ps", "-a", "--external", "--format", "{{.ID}}", check=False).stdout.split()
    images = podman("images", "-a", "--filter", "dangling=true", "--format", "{{.ID}}", check=False).stdout.split()
    return set(containers), set(images)


def _clean_up_after(before: tuple[set[str], set[str]]) -> None:
    """Remove what a failed or interrupted ``podman build`` left (podman 4.3 leaves its working
    containers, with their overlay mounts, and the intermediate images): the build containers
    and untagged images that were not there before it (newest first: children before parents)."""
    rows = podman("ps", "-a", "--external", "--format", "{{.ID}} {{.Names}}", check=False).stdout.splitlines()
    left = [row.split()[0] for row in rows if row.split()[0] not in before[0]
            and row.rstrip().endswith("-working-container")]
    if left:
        podman("rm", "-f", *left, check=False)
    for image_id in podman("images", "-a", "--filter", "dangling=true", "--format", "{{.ID}}",
                           check=False).stdout.split():
        if image_id not in before[1]:
            podman("rmi", image_id, check=False)


def _log_file(name: str) -> Path:
    return cache.root() / "image" / "logs" / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".log")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    found = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    if not found:
        raise ImageError("/etc/os-release: no VERSION_CODENAME (workbench image builds its base from this "
                         "machine's Debian apt sources)")
    return found.group(1)


def _apt_sources() -> list[str]:
    """The machine's Debian apt sources (mmdebstrap pastes a file it is given as a mirror)."""
    found = [str(p) for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
             if p.is_file() and p.read_text().strip()]
    if not found:
        raise ImageError("/etc/apt: no debian.sources or sources.list to build the image's base from")
    return found[:1]


def base_image(log: Callable[[str], None]) -> str:
    """The base image's tag, made first if podman does not have it: a Debian minbase root file
    system with python3 and python3-venv (mmdebstrap, the machine's apt sources), imported."""
    sources = _apt_sources()
    codename = _codename()
    base = BASE.format(codename=codename, key=cache.key(MMDEBSTRAP, [Path(f).read_text() for f in sources])[:12])
    if podman("image", "exists", base, check=False).returncode == 0:
        return base
    _require("mmdebstrap")
    with cache.file_lock(cache.root() / "image" / "base.lock"):  # one build of the base at a time
        if podman("image", "exists", base, check=False).returncode == 0:
            return base
        log(f"building the base image {base} with mmdebstrap (once; a minute or two)")
        with tempfile.TemporaryDirectory(prefix="workbench-base-") as tmp:
            tar = Path(tmp) / "rootfs.tar"
            out = _log_file("base")
            code, last = _run(["mmdebstrap", *MMDEBSTRAP, codename, str(tar), *sources], out, timeout=1800)
            if code != 0:
                raise BuildFailed(f"mmdebstrap failed: {last} (its output: {out})")
            podman("import", "--message",
                   "workbench image base: Debian minbase + python3, python3-venv", str(tar), base, timeout=600)
    return base


def _names(reqs: str) -> set[str]:
    return {re.split(r"[=<>!~ \[;]", line, maxsplit=1)[0].lower().replace("_", "-")
            for line in reqs.splitlines() if line.strip() and not line.lstrip().startswith("#")}


def _constraints(exclude: set[str]) -> str:
    """Every other distribution of this environment at its version: pip resolves the
    dependencies of the image's packages to what the host runs."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        norm = (name or "").lower().replace("_", "-")
        if name and dist.version and norm != "workbench" and norm not in exclude:
            pins[name.lower()] = f"{name}=={dist.version}"
    return "".join(line + "\n" for _, line in sorted(pins.items()))


def requirements(bundle: Path) -> str:
    """The image's requirements: the bundle's own (numpy and the runtime, exact versions) and the
    serving packages at the versions installed here."""
    req = bundle / "requirements.txt"
    if not req.is_file():
        raise ImageError(f"{bundle}: no requirements.txt (write the bundle with `workbench export`)")
    lines = [line.strip() for line in req.read_text().splitlines() if line.strip() and not line.startswith("#")]
    named = _names(req.read_text())
    for name, version in cache.versions(*SERVING_PACKAGES).items():
        if name not in named:
            if version == "absent":
                raise ImageError(f"{name} is not installed here (the image installs the versions this "
                                 "environment serves with)")
            lines.append(f"{name}=={version}")
    return "".join(line + "\n" for line in lines)


def wheels(reqs: str, log: Callable[[str], None]) -> Path:
    """The wheels of ``reqs`` for this Python, downloaded once by the host's pip (its index,
    certificates and constraints) into the workbench cache."""
    constraints = _constraints(_names(reqs))
    entry_key = cache.key("image-wheels", reqs, constraints, sys.version_info[:2], sys.platform)

    def download(out: Path) -> None:
        log("downloading the image's wheels with this machine's pip")
        (out / "requirements.txt").write_text(reqs)
        (out / "constraints.txt").write_text(constraints)
        log_file = _log_file("wheels")
        code, last = _run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(out),
                           "--disable-pip-version-check", "-r", str(out / "requirements.txt"),
                           "-c", str(out / "constraints.txt")], log_file, timeout=1800)
        if code != 0:
            raise BuildFailed(f"pip download of the image's packages failed: {last} (its output: {log_file})")

    return cache.entry("image-wheels", entry_key, download)


def check_tag(tag: str) -> str:
    if not tag or not TAG.match(tag):
        raise ImageError(f"--tag {tag!r}: not an image name (lowercase name[:tag], e.g. digits-cnn:1)")
    return tag


def build(bundle: str | Path, tag: str, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Build the image ``tag`` serving ``bundle``; returns its tag, id, size and build seconds.

    Everything a user can get wrong (the tag, the bundle, a missing tool) is refused before
    anything is built."""
    t0 = time.perf_counter()
    check_tag(tag)
    b = open_bundle(bundle)
    _require("podman", "runc")
    bundle = Path(bundle)
    reqs = requirements(bundle)
    steps = {"checks": time.perf_counter() - t0}
    base = base_image(log)
    steps["base image"] = time.perf_counter() - t0 - sum(steps.values())
    wheel_dir = wheels(reqs, log)
    steps["wheels"] = time.perf_counter() - t0 - sum(steps.values())
    package = Path(__file__).resolve().parents[1]  # the workbench package that runs this
    with tempfile.TemporaryDirectory(prefix="workbench-image-") as tmp:
        ctx = Path(tmp)
        (ctx / "requirements.txt").write_text(reqs)
        shutil.copytree(package, ctx / "workbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(bundle, ctx / "bundle", ignore=shutil.ignore_patterns(*NOT_COPIED, "__pycache__"))
        (ctx / "Containerfile").write_text(CONTAINERFILE.format(
            base=base, version=_version(), runtime=b.params.runtime, entrypoint=json.dumps(ENTRYPOINT)))
        log(f"building {tag} (podman build, base {base})")
        out, before, code = _log_file(f"build-{tag}"), _podman_state(), None
        try:
            code, last = _run(["podman", "build", "--force-rm", "--network=host", "--volume",
                               f"{wheel_dir}:/mnt:ro", "--tag", tag, "--file", str(ctx / "Containerfile"), str(ctx)],
                              out, timeout=1800, env=podman_env())
        finally:
            if code != 0:  # failed, interrupted or timed out
                _clean_up_after(before)
    if code != 0:
        raise BuildFailed(f"podman build of {tag} failed: {last} (its output: {out})")
    info = json.loads(podman("image", "inspect", tag).stdout)[0]
    steps["podman build"] = time.perf_counter() - t0 - sum(steps.values())
    return {"tag": tag, "id": info["Id"][:12], "size_bytes": int(info["Size"]), "base": base,
            "seconds": round(time.perf_counter() - t0, 1), "steps": {k: round(v, 1) for k, v in steps.items()},
            "containers_conf": podman_env()["CONTAINERS_CONF"]}


def _version() -> str:
    try:
        return metadata.version("workbench")
    except metadata.PackageNotFoundError:
        return "source"
