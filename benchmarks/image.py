"""`workbench image`: build time (cold base, warm rebuild, another bundle on the warm base), image
size and the container's start-up, for one digits_cnn bundle (onnxruntime).

Writes benchmarks/image.json and its own section at the end of benchmarks/serving.md (replaced
on each run; the rest of the page is serving.py's and load_generator.py's). Run with
`.venv/bin/python benchmarks/image.py` (~2-5 min cold on 2 cores); `--cold` first removes the
workbench's base images (`podman images localhost/workbench-base`) and downloads the wheels
into an empty cache, so the first build is a build from nothing; `--render` rewrites the section
from image.json. The images it builds are removed at the end; the base is kept.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from workbench import trial  # noqa: E402
from workbench.export import image  # noqa: E402
from workbench.export.run import export_trial  # noqa: E402

FAST = dict(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=2.0)
HEADING = "## Container image (`workbench image`)"
TAGS = ("localhost/workbench-bench:a", "localhost/workbench-bench:b")
OTHER_RUNTIMES = ("litert", "openvino")  # their image sizes, built on the warm base


def _bundle(out: Path, **params) -> Path:
    m = trial.run({**FAST, "runtime": "onnxruntime", **params})
    return export_trial(m, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _startup(tag: str) -> float:
    """Seconds from `podman run` to the model's ready route answering 200 (host network, loopback)."""
    port = _free_port()
    t0 = time.perf_counter()
    cid = image.podman("run", "-d", "--network=host", "-e", "HOST=127.0.0.1", "-e", f"PORT={port}", tag).stdout.strip()
    try:
        while time.perf_counter() - t0 < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/model/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{tag}: not ready in 120 s")
    finally:
        image.podman("rm", "-f", "-t", "10", cid, check=False)


def measure(cold: bool) -> dict:
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_before": os.getloadavg(),
           "cold": cold}
    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp:
        a, b = _bundle(Path(tmp) / "a"), _bundle(Path(tmp) / "b", threads=2)
        if cold:
            old = image.podman("images", "-q", image.BASE_REPO).stdout.split()
            if old:
                image.podman("rmi", *old)
            os.environ["WORKBENCH_CACHE_DIR"] = str(Path(tmp) / "cache")  # the wheels downloaded afresh
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        try:
            first = image.build(a, TAGS[0], log=log)
            again = image.build(a, TAGS[0], log=log)
            other = image.build(b, TAGS[1], log=log)
            res["startup_s"] = [round(_startup(TAGS[0]), 2) for _ in range(3)]
            res["runtimes"] = {}
            for rt in OTHER_RUNTIMES:
                tag = f"localhost/workbench-bench:{rt}"
                try:
                    res["runtimes"][rt] = image.build(_bundle(Path(tmp) / rt, runtime=rt), tag, log=log)
                finally:
                    image.podman("rmi", "-f", tag, check=False)
            base = json.loads(image.podman("image", "inspect", first["base"]).stdout)[0]
            layers = image.podman("history", "--format", "{{.Size}}\t{{.CreatedBy}}", TAGS[0]).stdout
            version = image.podman("--version").stdout.strip()
        finally:
            image.podman("rmi", "-f", *TAGS, check=False)
    res.update(first=first, again=again, other=other, base_size_bytes=int(base["Size"]),
               layers=[line.split("\t", 1) for line in layers.splitlines() if not line.startswith("0 B")],
               loadavg_after=os.getloadavg(), podman=version)
    return res


def render(res: dict) -> str:
    mb = lambda n: f"{n / 1e6:.0f} MB"  # noqa: E731
    f, g, o = res["first"], res["again"], res["other"]
    steps = lambda b: ", ".join(f"{k} {v:g}" for k, v in b.get("steps", {}).items())  # noqa: E731
    rows = [
        f"| first build ({'cold: no base, no wheels' if res['cold'] else 'base and wheels already there'}) "
        f"| {f['seconds']:g} s | {steps(f)} | {mb(f['size_bytes'])} |",
        f"| the same bundle again | {g['seconds']:g} s | {steps(g)} | {mb(g['size_bytes'])} |",
        f"| another bundle (threads 2), same base and packages | {o['seconds']:g} s | {steps(o)} "
        f"| {mb(o['size_bytes'])} |",
    ]
    rows += [f"| a bundle of runtime {rt}, same base | {r['seconds']:g} s | {steps(r)} | {mb(r['size_bytes'])} |"
             for rt, r in res.get("runtimes", {}).items()]
    layers = "\n".join(f"| {size} | `{what.strip()[:70]}` |" for size, what in res["layers"])
    return f"""{HEADING}

Measured {res['date']} by `benchmarks/image.py`{' --cold' if res['cold'] else ''} ({res['podman']}, runc,
the host network) on this shared 2-core machine: load average (1, 5, 15 min) before
{', '.join(f'{x:.1f}' for x in res['loadavg_before'])}, after {', '.join(f'{x:.1f}' for x in res['loadavg_after'])};
all figures of one run. One digits_cnn bundle (onnxruntime fp32); the image holds the bundle, the
workbench package (no dependencies of its own) and, in a venv, its requirements.txt plus the
serving packages at this machine's versions (no TensorFlow, no pip).

| build | seconds | of which (s) | image size |
| --- | --- | --- | --- |
{chr(10).join(rows)}

The base image (`{f['base']}`, Debian minbase + python3 and python3-venv from this
machine's apt sources, no documentation or translations): {mb(res['base_size_bytes'])}; it stays in
podman's storage and every later build reuses it (`podman rmi $(podman images -q
{image.BASE_REPO})` removes it). The wheels stay in the workbench cache
(`~/.cache/workbench/image-wheels/`). From `podman run` to the model's ready route answering:
{', '.join(f'{s:g} s' for s in res['startup_s'])} (three starts).

Layers of the image (`podman history`, empty ones left out):

| size | made by |
| --- | --- |
{layers}
"""


def main() -> None:
    if "--render" not in sys.argv:
        res = measure(cold="--cold" in sys.argv)
        # no machine-specific path in the repository: the home directory as ~
        (HERE / "image.json").write_text(json.dumps(res, indent=2, default=str).replace(str(Path.home()), "~"))
    res = json.loads((HERE / "image.json").read_text())
    page = (HERE / "serving.md").read_text() if (HERE / "serving.md").exists() else ""
    at = page.find(HEADING)
    if at >= 0:
        end = page.find("\n## ", at + len(HEADING))
        page = page[:at].rstrip() + ("\n\n" + page[end + 1:] if end >= 0 else "")
    (HERE / "serving.md").write_text(page.rstrip() + "\n\n" + render(res))
    print(render(res))


if __name__ == "__main__":
    main()
