"""Issue 22, finding 7 (the store's transport): MinIO serves TLS with a cert-manager certificate, every service
reaches it with MINIO_SECURE=1 and verifies it with the montessori CA, and the bucket Job speaks TLS too, holding
only the CA of that certificate. Before, store traffic (credentials and artifacts) was plaintext (MINIO_SECURE=0).
The per-service store policies are checked in test_manifests.py (test_bucket_job_creates_one_bucket_scoped_user...).
"""

from __future__ import annotations

import pytest

from tests.unit.k8s.test_manifests import (
    OVERLAYS,
    SERVICES,
    TLS_DIR,
    containers,
    find,
    main_container,
    of_kind,
    pod_template,
    rendered,  # noqa: F401 - the module fixture
    service_deployment,
    settings,
)

MINIO_SECRET = "montessori-minio-tls"


def _volume(obj: dict, name: str) -> dict:
    (volume,) = [v for v in pod_template(obj)["spec"]["volumes"] if v["name"] == name]
    return volume


@pytest.mark.parametrize("target", OVERLAYS)
def test_minio_serves_tls_with_its_certificate_and_every_service_verifies_it(rendered, target):  # noqa: F811
    objects = rendered[target]
    config = settings(objects)["data"]
    assert config["MINIO_SECURE"] == "1"
    assert config["MINIO_CA_FILE"] == f"{TLS_DIR}/ca.crt"  # each service's own TLS folder: the same CA
    for service in SERVICES:  # the folder MINIO_CA_FILE names is mounted in every service
        mounts = {m["mountPath"] for m in main_container(service_deployment(objects, service))["volumeMounts"]}
        assert TLS_DIR in mounts, service

    (certificate,) = [c for c in of_kind(objects, "Certificate") if c["spec"]["secretName"] == MINIO_SECRET]
    host = config["MINIO_ENDPOINT"].rsplit(":", 1)[0]
    assert host in certificate["spec"]["dnsNames"] and "server auth" in certificate["spec"]["usages"]
    assert certificate["spec"]["issuerRef"]["name"] == "montessori-ca"

    minio = find(objects, "StatefulSet", "minio")
    (container,) = containers(minio, init=False)
    certs_dir = container["args"][container["args"].index("--certs-dir") + 1]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == certs_dir]
    assert mount["readOnly"] is True
    secret = _volume(minio, mount["name"])["secret"]
    assert secret["secretName"] == MINIO_SECRET
    assert {(i["key"], i["path"]) for i in secret["items"]} == {
        ("tls.crt", "public.crt"),
        ("tls.key", "private.key"),
        ("ca.crt", "CAs/ca.crt"),
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_bucket_job_speaks_tls_and_holds_only_the_ca(rendered, target):  # noqa: F811
    job = find(rendered[target], "Job", "minio-bucket-init")
    (mc,) = containers(job)
    env = {e["name"]: e.get("value") for e in mc["env"]}
    assert env["MC_HOST_montessori"].startswith("https://")
    (mount,) = [m for m in mc["volumeMounts"] if m["mountPath"] == "/tmp/.mc/certs/CAs"]
    secret = _volume(job, mount["name"])["secret"]
    assert secret["secretName"] == MINIO_SECRET
    assert secret["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never MinIO's private key
