"""``workbench k8s CONFIG --workers N``: a Kubernetes manifest that runs the sweep on Dask.

Why Dask-on-Kubernetes and not an Indexed Job: ``workbench sweep --dask`` (``sweep/dask.py``)
already is the cluster path, so the manifest only starts its parts - a scheduler (Deployment +
Service), N worker pods started with Dask's own CLI (``dask worker --nthreads 1``), and a
driver Job running ``workbench sweep CONFIG --dask tcp://NAME-scheduler:8786``. The driver
alone asks and tells, so the storage credentials go to one pod only, a worker lost mid-trial
is a re-run trial, and the run directory is written by one process. An Indexed Job would run N
independent ``workbench sweep`` processes instead: each needs the credentials, they share the
study through the ask lock, their run directory must be shared read-write, and a pod killed
mid-trial leaves a RUNNING trial until another sweep recovers it.

- Dask's scheduler and workers accept any client, and a client runs code on the workers: a
  NetworkPolicy admits only this sweep's own pods (where the network plug-in enforces it); for
  more, Dask's TLS as in the README.
- The storage URL (PostgreSQL) comes from a Secret, as ``WORKBENCH_STORAGE``
  (``valueFrom.secretKeyRef``) in the driver only; it never appears on a command line or in
  the manifest. An experiment with a ``storage`` field is refused (it would be printed).
- The experiment file travels in a ConfigMap. A file model or data set must be an absolute path
  under the shared volume's mount (``--pvc``, a ReadWriteMany claim, read-only on the workers):
  the Dask sweep needs them at the same path on every worker. The run directory goes to
  ``MOUNT/runs`` on that volume, so it outlives the driver's pod.
- One timed trial per machine: on one machine the measurement lock is a file in the temp
  directory, shared by every trial kernel there; pods do not share ``/tmp``, so the manifest
  keeps one workbench worker pod per node, of any sweep in any namespace (required pod
  anti-affinity on ``kubernetes.io/hostname``; with fewer free nodes than ``--workers`` the rest
  stay Pending). Workers request ``--cpu`` and
  ``--memory`` but have no CPU limit: CFS throttling would show up as latency.
- The driver Job retries (``backoffLimit``): it waits a minute for workers, and a re-run
  ``workbench sweep`` continues the same study.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import yaml

from workbench.config import Experiment
from workbench.core.errors import ConfigError
from workbench.results.storage import ENV

PORT = 8786
CONFIG_DIR = "/etc/workbench"
# a Service name is a DNS-1035 label; the suffixes ("-scheduler") must still fit in 63 characters
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # DNS-1123 label
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
IMAGE = re.compile(r"^[^\s]+$")


def check_options(*, workers: int, name: str, namespace: str, secret: str, secret_key: str, pvc: str,
                  image: str, cpu: str, memory: str, mount: str, config: str) -> None:
    """Refuse bad options before the experiment is read: one line naming the option."""
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    if not NAME.match(name):
        raise ConfigError(f"--name {name!r}: lower-case letters, digits and '-', starting with a letter, "
                          "at most 40 characters (a DNS-1035 label, with room for '-scheduler')")
    for flag, value in (("--namespace", namespace), ("--secret", secret), ("--pvc", pvc)):
        if not LABEL.match(value):
            raise ConfigError(f"{flag} {value!r}: not a valid DNS-1123 label (lower-case letters, digits "
                              "and '-', starting and ending with a letter or digit, at most 63 characters)")
    if not SECRET_KEY.match(secret_key):
        raise ConfigError(f"--secret-key {secret_key!r}: letters, digits, '-', '_' and '.' only")
    if not IMAGE.match(image):
        raise ConfigError(f"--image {image!r}: an image reference without spaces")
    for flag, value in (("--cpu", cpu), ("--memory", memory)):
        if not QUANTITY.match(value):
            raise ConfigError(f"{flag} {value!r}: a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    if not SECRET_KEY.match(Path(config).name):  # the ConfigMap's key
        raise ConfigError(f"{config}: a file name of letters, digits, '-', '_' and '.' only (a ConfigMap key)")
    if not mount.startswith("/") or mount.rstrip("/") == "" or not IMAGE.match(mount):
        raise ConfigError(f"--mount {mount!r}: an absolute path other than /, without spaces")


def check_experiment(exp: Experiment, config: Path, mount: str) -> None:
    """What a pod cannot use: a storage URL in the file, a model or data set off the shared volume."""
    if exp.storage:
        raise ConfigError(f"{config}: storage: the manifest takes the storage URL from the Secret "
                          "(--secret); remove it from the experiment, which goes into a ConfigMap")
    prefix = mount.rstrip("/") + "/"
    for field in ("model", "data"):
        spec = getattr(exp, field)
        if exp.resolve(spec) == spec and "/" not in spec:
            continue  # builtin: each worker builds it into its own cache
        if not posixpath.normpath(spec).startswith(prefix):
            raise ConfigError(f"{config}: {field} {spec!r}: on the cluster a file {field} must be an "
                              f"absolute path under {prefix} (the --pvc volume, the same on every worker)")


def manifest(exp: Experiment, config: Path, *, workers: int, image: str, pvc: str, name: str = "workbench",
             namespace: str = "default", secret: str = "workbench-storage", secret_key: str = "url",
             cpu: str = "1", memory: str = "2Gi", mount: str = "/shared") -> str:
    """The manifest as YAML documents: ConfigMap, scheduler Deployment and Service, workers, driver
    Job, and a NetworkPolicy that lets only these pods reach one another."""
    mount = mount.rstrip("/")
    labels = {"app.kubernetes.io/name": "workbench", "app.kubernetes.io/instance": name}

    def meta(suffix: str, component: str) -> dict:
        return {"name": f"{name}-{suffix}", "namespace": namespace,
                "labels": {**labels, "app.kubernetes.io/component": component}}

    def selector(component: str) -> dict:
        return {**labels, "app.kubernetes.io/component": component}

    shared = {"name": "shared", "persistentVolumeClaim": {"claimName": pvc}}
    scheduler_address = f"tcp://{name}-scheduler:{PORT}"
    config_file = f"{CONFIG_DIR}/{config.name}"

    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("experiment", "experiment"),
                 "data": {config.name: config.read_text(encoding="utf-8")}}
    scheduler = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("scheduler", "scheduler"),
        "spec": {"replicas": 1, "selector": {"matchLabels": selector("scheduler")},
                 "template": {"metadata": {"labels": selector("scheduler")}, "spec": {
                     "automountServiceAccountToken": False,
                     "containers": [{
                         "name": "scheduler", "image": image,
                         "command": ["dask", "scheduler", "--port", str(PORT), "--no-dashboard"],
                         "ports": [{"name": "dask", "containerPort": PORT}],
                         "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 5},
                         "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}]}}}}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta("scheduler", "scheduler"),
        "spec": {"selector": selector("scheduler"),
                 "ports": [{"name": "dask", "port": PORT, "targetPort": PORT}]}}
    worker_deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("worker", "worker"),
        "spec": {"replicas": workers, "selector": {"matchLabels": selector("worker")},
                 "template": {"metadata": {"labels": selector("worker")}, "spec": {
                     "automountServiceAccountToken": False,
                     # one timed trial per node: the measurement lock is per /tmp, i.e. per pod; so
                     # no two workbench workers on a node, of this sweep or any other, in any namespace
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                         {"labelSelector": {"matchLabels": {"app.kubernetes.io/name": "workbench",
                                                            "app.kubernetes.io/component": "worker"}},
                          "namespaceSelector": {}, "topologyKey": "kubernetes.io/hostname"}]}},
                     "containers": [{
                         "name": "worker", "image": image,
                         "command": ["dask", "worker", scheduler_address, "--nworkers", "1",
                                     "--nthreads", "1", "--no-dashboard"],
                         "resources": {"requests": {"cpu": cpu, "memory": memory},
                                       "limits": {"memory": memory}},  # no CPU limit: throttling skews latency
                         "volumeMounts": [{"name": "shared", "mountPath": mount, "readOnly": True}]}],
                     "volumes": [shared]}}}}
    driver = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta("sweep", "driver"),
        "spec": {"backoffLimit": 4, "template": {"metadata": {"labels": selector("driver")}, "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "containers": [{
                "name": "sweep", "image": image,
                "command": ["workbench", "sweep", config_file, "--dask", scheduler_address,
                            "--runs-dir", f"{mount}/runs", "--quiet"],
                "env": [{"name": ENV,
                         "valueFrom": {"secretKeyRef": {"name": secret, "key": secret_key}}}],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                "volumeMounts": [{"name": "shared", "mountPath": mount},
                                 {"name": "experiment", "mountPath": CONFIG_DIR, "readOnly": True}]}],
            "volumes": [shared, {"name": "experiment", "configMap": {"name": f"{name}-experiment"}}]}}}}
    # Dask runs whatever a client submits: only this sweep's own pods may reach its scheduler and
    # workers (enforced where the cluster's network plug-in implements NetworkPolicy)
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("dask", "network"),
        "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": labels}}]}]}}
    docs = [configmap, scheduler, service, worker_deployment, driver, policy]
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the experiment in the ConfigMap) as literal blocks, readable in review."""


_Dumper.add_representer(str, lambda dumper, s: dumper.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))
