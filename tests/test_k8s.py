"""``workbench k8s``: the printed manifest is valid Kubernetes (by schema: no cluster runs here),
keeps the storage URL out, and bad input is one line with exit code 2."""

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

from workbench import cli

K8S_VERSION = "1.37.0"  # a recent release whose schemas kubernetes-validate ships (offline)
URL = "postgresql://sweeper:s3cret-pw@db.internal:5432/optuna"
DIGITS = str(ROOT / "experiments" / "digits.yaml")
REQUIRED = ["--image", "registry.example/workbench:1.0", "--pvc", "workbench-data"]


def _run(capsys, *args):
    code = cli.main(["k8s", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def storage_env(monkeypatch):
    monkeypatch.setenv("WORKBENCH_STORAGE", URL)  # as on the user's machine: it must not leak


def test_manifest_is_valid_kubernetes_and_runs_the_dask_sweep(capsys):
    code, out, err = _run(capsys, DIGITS, "--workers", "3", *REQUIRED, "--namespace", "sweeps",
                          "--name", "digits-sweep")
    assert code == 0, err
    docs = list(yaml.safe_load_all(out))
    for doc in docs:  # strict: an unknown field is an error too
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = yaml.safe_load_all(out.replace("containerPort: 8786", "containerPort: dask", 1))
    with pytest.raises(kubernetes_validate.ValidationError):  # the schemas are really checked
        for doc in broken:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert set(kinds) == {("ConfigMap", "digits-sweep-experiment"), ("Deployment", "digits-sweep-scheduler"),
                          ("Service", "digits-sweep-scheduler"), ("Deployment", "digits-sweep-worker"),
                          ("Job", "digits-sweep-sweep"), ("NetworkPolicy", "digits-sweep-dask")}
    assert {d["metadata"]["namespace"] for d in docs} == {"sweeps"}

    workers = kinds[("Deployment", "digits-sweep-worker")]["spec"]
    assert workers["replicas"] == 3
    pod = workers["template"]["spec"]
    worker_cmd = pod["containers"][0]["command"]
    assert worker_cmd[:3] == ["dask", "worker", "tcp://digits-sweep-scheduler:8786"]
    assert worker_cmd[worker_cmd.index("--nthreads") + 1] == "1"
    rule = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert rule["topologyKey"] == "kubernetes.io/hostname"  # one worker, one timed trial, per node
    assert rule["labelSelector"]["matchLabels"].items() <= workers["template"]["metadata"]["labels"].items()
    assert rule["namespaceSelector"] == {}  # nor another sweep's worker, in any namespace

    policy = kinds[("NetworkPolicy", "digits-sweep-dask")]["spec"]  # only this sweep's pods reach Dask
    own = {"app.kubernetes.io/name": "workbench", "app.kubernetes.io/instance": "digits-sweep"}
    assert policy["podSelector"]["matchLabels"] == own and policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            assert d["spec"]["template"]["metadata"]["labels"].items() >= own.items()

    service = kinds[("Service", "digits-sweep-scheduler")]["spec"]
    scheduler = kinds[("Deployment", "digits-sweep-scheduler")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"] == scheduler and service["ports"][0]["port"] == 8786

    job = kinds[("Job", "digits-sweep-sweep")]["spec"]["template"]["spec"]
    driver = job["containers"][0]
    assert driver["command"][:3] == ["workbench", "sweep", "/etc/workbench/digits.yaml"]
    assert driver["command"][driver["command"].index("--dask") + 1] == "tcp://digits-sweep-scheduler:8786"
    assert "--storage" not in driver["command"]
    assert driver["env"] == [{"name": "WORKBENCH_STORAGE",
                              "valueFrom": {"secretKeyRef": {"name": "workbench-storage", "key": "url"}}}]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"workbench-data"}
    assert kinds[("ConfigMap", "digits-sweep-experiment")]["data"]["digits.yaml"] == (ROOT / "experiments"
                                                                                       / "digits.yaml").read_text()
    # the URL, its password and its host appear nowhere; only the driver has the Secret
    for secret_part in (URL, "s3cret-pw", "db.internal"):
        assert secret_part not in out
    assert out.count("secretKeyRef") == 1


def test_secret_name_and_key_are_options(capsys):
    code, out, _ = _run(capsys, DIGITS, "--workers", "1", *REQUIRED, "--secret", "pg-url", "--secret-key", "dsn")
    assert code == 0
    job = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Job")
    ref = job["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "pg-url", "key": "dsn"}


def _experiment(tmp_path, extra: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text((ROOT / "experiments" / "digits.yaml").read_text() + extra)
    return str(path)


@pytest.mark.parametrize("args, expected", [
    (["missing.yaml", "--workers", "2"], "missing.yaml: experiment file not found"),
    ([DIGITS, "--workers", "0"], "--workers: must be at least 1 (got 0)"),
    ([DIGITS, "--workers", "2", "--namespace", "Team_A"], "--namespace 'Team_A': not a valid DNS-1123 label"),
    ([DIGITS, "--workers", "2", "--secret", "pg-"], "--secret 'pg-': not a valid DNS-1123 label"),
    ([DIGITS, "--workers", "2", "--name", "9sweep"], "--name '9sweep': lower-case letters"),
    ([DIGITS, "--workers", "2", "--cpu", "two"], "--cpu 'two': a Kubernetes quantity"),
    ([DIGITS, "--workers", "2", "--mount", "data"], "--mount 'data': an absolute path"),
])
def test_bad_options_are_one_line_exit_2(capsys, args, expected):
    code, out, err = _run(capsys, *args, *REQUIRED)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err


def test_a_storage_url_in_the_experiment_is_refused(capsys, tmp_path):
    path = _experiment(tmp_path, f"storage: {URL}\n")
    code, out, err = _run(capsys, path, "--workers", "2", *REQUIRED)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {path}: storage: the manifest takes the storage URL from the Secret")
    assert err.count("\n") == 1 and "s3cret-pw" not in err


def test_a_file_model_must_be_on_the_shared_volume(capsys, tmp_path):
    relative = _experiment(tmp_path, "").replace("exp.yaml", "rel.yaml")
    (tmp_path / "rel.yaml").write_text((tmp_path / "exp.yaml").read_text().replace("model: digits_cnn",
                                                                                   "model: byo/m.onnx"))
    code, out, err = _run(capsys, relative, "--workers", "2", *REQUIRED)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {relative}: model 'byo/m.onnx': on the cluster a file model must be "
                          "an absolute path under /shared/")

    shared = tmp_path / "shared.yaml"
    shared.write_text((tmp_path / "exp.yaml").read_text().replace("model: digits_cnn", "model: /shared/m.onnx"))
    code, out, err = _run(capsys, str(shared), "--workers", "2", *REQUIRED)
    assert code == 0, err
    shared.write_text((tmp_path / "exp.yaml").read_text().replace("model: digits_cnn", "model: /shared/../m.onnx"))
    code, out, err = _run(capsys, str(shared), "--workers", "2", *REQUIRED)
    assert code == 2 and "model '/shared/../m.onnx': on the cluster" in err
