"""Bring-up with no hand steps (k8s/): the gpu overlay loads models from the store, not from a volume filled by
hand; the services that load models cache them on a volume sized for models, where ``MONTESSORI_CACHE_DIR``
points; the trainer's scratch is a volume of its own; the deploy steps (docs/deploy.md) run in an order that works.

Rendering and helpers are those of test_manifests.py (kubectl kustomize, offline)."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tests.unit.k8s.test_manifests import (
    CPU_SERVICES,
    K8S,
    MODEL_READERS,
    REPO,
    SERVICES,
    _kustomize,
    _render,
    find,
    ident,
    main_container,
    of_kind,
    pod_template,
    rendered,  # noqa: F401 - the module-scoped fixture
    service_deployment,
    settings,
)

CACHE_DIR = "/var/cache/montessori"
SCRATCH_DIR = "/var/tmp/montessori"
GIB = 1024**3
#: Smallest cache a GPU worker may have: a teacher and a student of 8B parameters in bf16 (~16 GB each).
MIN_GPU_CACHE = 32 * GIB


def quantity(value: str) -> int:
    """A Kubernetes quantity (``64Gi``, ``500Mi``, ``2G``) in bytes."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    scale = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(number) * scale[unit])


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def volume_at(deployment: dict, path: str) -> dict | None:
    """The volume mounted at ``path`` in the service container (None: nothing mounted there)."""
    mounts = {m["mountPath"]: m["name"] for m in main_container(deployment).get("volumeMounts", [])}
    if path not in mounts:
        return None
    (volume,) = [v for v in pod_template(deployment)["spec"]["volumes"] if v["name"] == mounts[path]]
    return volume


def claims(objects: list[dict]) -> list[str]:
    """Every claim a workload mounts or creates (StatefulSet volumeClaimTemplates included)."""
    names = [ident(c) for c in of_kind(objects, "PersistentVolumeClaim")]
    for obj in objects:
        spec = obj.get("spec", {})
        names += [f"template:{t['metadata']['name']}" for t in spec.get("volumeClaimTemplates", [])]
    return names


def test_the_gpu_overlay_has_no_claim_to_fill_by_hand(rendered):  # noqa: F811
    """Only MinIO's own volume (written by MinIO itself) is claimed; no service mounts /models or any claim."""
    objects = rendered["gpu"]
    assert claims(objects) == ["template:data"], claims(objects)
    for service in SERVICES:
        deployment = service_deployment(objects, service)
        assert volume_at(deployment, "/models") is None, f"{service} mounts /models"
        volumes = pod_template(deployment)["spec"]["volumes"]
        assert not [v for v in volumes if "persistentVolumeClaim" in v], f"{service}: {volumes}"


def test_cpu_dev_keeps_its_seeded_models_claim_readwriteonce(rendered):  # noqa: F811
    """cpu-dev still builds its models in-cluster (models-seed Job) on a claim every single-node class offers."""
    objects = rendered["cpu-dev"]
    claim = find(objects, "PersistentVolumeClaim", "montessori-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and "storageClassName" not in claim["spec"]
    job = pod_template(find(objects, "Job", "models-seed"))["spec"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "montessori-models"}} in job["volumes"]
    for service in MODEL_READERS:
        volume = volume_at(service_deployment(objects, service), "/models")
        assert volume["persistentVolumeClaim"]["claimName"] == "montessori-models", service


@pytest.mark.parametrize("target", ("base", "gpu", "cpu-dev"))
def test_model_readers_cache_on_their_own_volume_where_the_store_cache_points(rendered, target):  # noqa: F811
    objects = rendered[target]
    for service in MODEL_READERS:
        deployment = service_deployment(objects, service)
        container = main_container(deployment)
        assert env_of(container)["MONTESSORI_CACHE_DIR"] == CACHE_DIR, service  # env wins over the ConfigMap
        cache = volume_at(deployment, CACHE_DIR)
        assert cache is not None and "emptyDir" in cache, f"{service}: no cache volume at {CACHE_DIR}"
        tmp = volume_at(deployment, "/tmp")
        assert cache["name"] != tmp["name"], f"{service}: the cache must not share the small /tmp volume"
        assert quantity(cache["emptyDir"]["sizeLimit"]) > quantity(tmp["emptyDir"]["sizeLimit"]), service
        scratch = volume_at(deployment, SCRATCH_DIR)
        assert env_of(container)["TMPDIR"] == SCRATCH_DIR and "emptyDir" in scratch, service
        assert scratch["name"] not in (cache["name"], tmp["name"]), service


def test_the_gpu_cache_and_trainer_scratch_are_sized_for_models_and_scheduled_for(rendered):  # noqa: F811
    objects = rendered["gpu"]
    for service in MODEL_READERS:
        deployment = service_deployment(objects, service)
        cache = volume_at(deployment, CACHE_DIR)["emptyDir"]
        assert quantity(cache["sizeLimit"]) >= MIN_GPU_CACHE, service
        requests = main_container(deployment)["resources"]["requests"]
        scratch = volume_at(deployment, SCRATCH_DIR)["emptyDir"]
        tmp = volume_at(deployment, "/tmp")["emptyDir"]
        needed = sum(quantity(v["sizeLimit"]) for v in (cache, scratch, tmp))
        # The scheduler only places the pod where its emptyDirs fit (an emptyDir past its limit is evicted).
        assert quantity(requests["ephemeral-storage"]) >= min(needed, quantity(cache["sizeLimit"])), service
    trainer = service_deployment(objects, "trainer")
    assert quantity(volume_at(trainer, SCRATCH_DIR)["emptyDir"]["sizeLimit"]) >= 64 * GIB
    assert quantity(main_container(trainer)["resources"]["requests"]["ephemeral-storage"]) >= quantity(
        volume_at(trainer, SCRATCH_DIR)["emptyDir"]["sizeLimit"]
    )


@pytest.mark.parametrize("target", ("gpu", "cpu-dev"))
def test_services_that_load_no_model_keep_their_cache_in_tmp(rendered, target):  # noqa: F811
    """The controller and preference read data sets and scores only: the ConfigMap's cache dir, inside /tmp."""
    objects = rendered[target]
    configured = settings(objects)["data"]["MONTESSORI_CACHE_DIR"]
    for service in CPU_SERVICES:
        container = main_container(service_deployment(objects, service))
        assert "MONTESSORI_CACHE_DIR" not in env_of(container), service
        assert configured.startswith("/tmp/") and volume_at(service_deployment(objects, service), "/tmp"), service


def test_the_8gpu_trainer_variant_keeps_the_cache_and_scratch(tmp_path):
    """gpu + components/trainer-8gpu: the trainer that fine-tunes 8B models in full still caches and scratches on
    the model-sized volumes (its own patches must not drop them), and still mounts no claim."""
    kustomization = tmp_path / "kustomization.yaml"
    k8s = os.path.relpath(K8S, tmp_path)
    if not (K8S / "components" / "trainer-8gpu" / "kustomization.yaml").is_file():
        pytest.skip("k8s/components/trainer-8gpu is not there yet")
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
    trainer = service_deployment(objects, "trainer")
    gpu_trainer = service_deployment(_render("gpu"), "trainer")
    for path in (CACHE_DIR, SCRATCH_DIR):
        assert volume_at(trainer, path) == volume_at(gpu_trainer, path), path
    assert env_of(main_container(trainer))["TMPDIR"] == SCRATCH_DIR
    assert volume_at(trainer, "/models") is None
    assert "ephemeral-storage" in main_container(trainer)["resources"]["requests"]


def test_the_gpu_run_config_example_names_models_by_store_uri():
    from common.config import from_dict
    from services.controller.config import RunConfig

    example = K8S / "overlays" / "gpu" / "examples" / "run-config.yaml"
    document = yaml.safe_load(example.read_text())
    config = from_dict(RunConfig, document)  # a valid run config as written
    bucket = settings(_render("gpu"))["data"]["MONTESSORI_ARTIFACTS_DIR"]
    for role in ("teacher", "student"):
        assert getattr(config.models, role).startswith(f"{bucket}/models/"), role
    kustomization = yaml.safe_load((K8S / "overlays" / "gpu" / "kustomization.yaml").read_text())
    assert not [r for r in kustomization.get("resources", []) if "examples" in r]  # documentation, not applied


def _deploy_section() -> str:
    """The numbered deploy steps of docs/deploy.md (the README links there)."""
    page = (REPO / "docs" / "deploy.md").read_text()
    match = re.search(r"^## The steps \(gpu overlay\)\n(.*?)(?=^## )", page, re.S | re.M)
    assert match, "docs/deploy.md has no '## The steps (gpu overlay)' section"
    return match.group(1)


def test_the_readme_deploy_steps_come_in_an_order_that_works():
    section = _deploy_section()
    steps = [
        "kubectl create namespace montessori",
        "create secret generic montessori-minio",
        "montessori-store-$service",
        "docker build",
        "kubectl apply -k k8s/overlays/gpu",
        "montessori models push",
        "montessori loop",
    ]
    positions = [section.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions) if p == -1]
    assert positions == sorted(positions), dict(zip(steps, positions))
    assert "cert-manager" in section[: positions[4]]  # a prerequisite, named before the apply
    for client_setting in ("MONTESSORI_TLS_DIR", "MONTESSORI_TOKEN_FILE", "--store s3://"):
        assert client_setting in section[positions[5] :], f"the loop is started without {client_setting}"


def test_the_readme_builds_every_image_the_overlays_run():
    section = _deploy_section()
    makefile = (REPO / "Makefile").read_text()
    image = re.search(r"^IMAGE \?= (\S+)", makefile, re.M).group(1)
    built = set(re.findall(r"-t (\S+)", section))
    for tagged in (f"{image}:0.1.0-cpu", f"{image}:0.1.0", f"{image}-teacher-vllm:0.1.0"):
        assert tagged in built, f"docs/deploy.md does not build {tagged}: {sorted(built)}"
    for overlay in ("gpu", "cpu-dev"):
        for obj in _render(overlay):
            if obj["kind"] in ("Deployment", "Job", "StatefulSet"):
                for container in pod_template(obj)["spec"]["containers"]:
                    if container["image"].startswith(image):
                        assert container["image"] in built, f"{overlay} runs {container['image']}, never built"


def test_k8s_readme_has_no_stale_lines():
    text = (K8S / "README.md").read_text()
    assert "not implemented" not in text
    assert "bind it to a volume that already holds the models" not in text
    assert "downloads cached per pod in `/tmp/cache`" not in text or "/var/cache/montessori" in text
    assert "montessori models push" in text
