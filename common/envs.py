"""Every environment variable montessori reads, in one typed place.

Nothing else in the code base reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Variables the Hugging Face libraries must see before they are imported: the
#: machines this runs on have no model hub, and without them transformers retries
#: the hub with back-off for every file it does not find locally.
OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_defaults() -> None:
    """Set the offline variables unless the user set them. Called by entry points only."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)


#: Default gRPC port of each service (``make up`` uses these; metrics ports are +100 above 9000).
DEFAULT_PORTS = {"controller": 50050, "teacher": 50051, "influence": 50052, "preference": 50053, "trainer": 50054}


def service_address(service: str) -> str:
    """``MONTESSORI_<SERVICE>_ADDR``, or the service's default port on loopback."""
    return os.environ.get(f"MONTESSORI_{service.upper()}_ADDR", f"127.0.0.1:{DEFAULT_PORTS[service]}")


def test_seed() -> int:
    """``MONTESSORI_TEST_SEED`` (default 0): the draw the test suite runs its tiny loops under. It is folded into
    the tiny models' initialisation (``setup.offline_models.build_tiny_models``) and into the loop seeds of the
    loop-level tests, so that a test that holds for one draw only fails on the developer's machine too."""
    value = os.environ.get("MONTESSORI_TEST_SEED", "0")
    if not value.isdigit() or int(value) > 10_000:
        raise ValueError(f"MONTESSORI_TEST_SEED: must be an integer in 0..10000, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Env:
    """Typed view of the environment.

    MONTESSORI_MODELS_DIR: where ``make setup`` puts the offline models (default ``models``).
    MONTESSORI_ARTIFACTS_DIR: default local artifact-store root (default ``artifacts``).
    MONTESSORI_LOG_LEVEL: log level for the JSON logs (default ``INFO``).
    MONTESSORI_LOG_JSON: ``1`` for JSON-line logs on stderr, ``0`` for plain text (default ``1``).
    MONTESSORI_TORCH_THREADS: torch intra-op threads (default: torch's choice).
    MONTESSORI_<SERVICE>_ADDR: host:port of a service for clients (see ``service_address``).
    MINIO_ENDPOINT: host:port of the S3 server (MinIO or any S3-compatible store).
    MINIO_ACCESS_KEY / MINIO_SECRET_KEY: S3 credentials (never logged).
    MINIO_SECURE: ``1`` for TLS (default ``0``).
    MINIO_CA_FILE: CA bundle (PEM) that verifies the store's TLS certificate (default: the system's).
    MINIO_SERVER_NAME: name the store's certificate is checked against when MINIO_ENDPOINT does not carry it (a
        port-forward to 127.0.0.1: ``minio``; default: the endpoint's host).
    MONTESSORI_TLS_DIR: TLS folder (``ca.crt``, ``tls.crt``, ``tls.key``) of a service, or a client's ``ca.crt``.
    MONTESSORI_TOKEN: bearer token a client sends to the controller (never logged).
    MONTESSORI_TOKEN_FILE: file holding that token (used when MONTESSORI_TOKEN is unset).
    MONTESSORI_SERVER_NAME: name a client checks the controller's certificate against when the address does not
        carry it (a port-forward to 127.0.0.1: ``controller``); ``--server-name`` overrides it.
    MONTESSORI_CACHE_DIR: node-local cache of downloaded artifacts, keyed by digest (default ``~/.cache/montessori``).
    MONTESSORI_JUDGE_API_KEY: bearer token of an OpenAI-compatible judge endpoint (never logged or written).
    MONTESSORI_MODEL_ROOTS: further node-local model folders a service loads models from, beside
        MONTESSORI_MODELS_DIR (separated by ``os.pathsep``).
    POD_NAME / POD_NAMESPACE: the controller's pod and namespace (the downward API): its leader-election identity
        and the namespace of its Lease (default ``montessori``).
    RANK: this training process's rank in a multi-process launch (set by accelerate; default 0).
    """

    models_dir: str
    artifacts_dir: str
    log_level: str
    log_json: bool
    torch_threads: int | None
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_secure: bool
    cache_dir: str
    judge_api_key: str | None = None
    s3_ca_file: str = ""
    s3_server_name: str = ""
    tls_dir: str = ""
    token: str = ""
    token_file: str = ""
    server_name: str = ""
    model_roots: tuple[str, ...] = ()
    pod_name: str = ""
    pod_namespace: str = "montessori"
    rank: int = 0

    @classmethod
    def read(cls) -> Env:
        threads = os.environ.get("MONTESSORI_TORCH_THREADS")
        return cls(
            models_dir=os.environ.get("MONTESSORI_MODELS_DIR", "models"),
            artifacts_dir=os.environ.get("MONTESSORI_ARTIFACTS_DIR", "artifacts"),
            log_level=os.environ.get("MONTESSORI_LOG_LEVEL", "INFO").upper(),
            log_json=os.environ.get("MONTESSORI_LOG_JSON", "1") != "0",
            torch_threads=int(threads) if threads else None,
            s3_endpoint=os.environ.get("MINIO_ENDPOINT", ""),
            s3_access_key=os.environ.get("MINIO_ACCESS_KEY", ""),
            s3_secret_key=os.environ.get("MINIO_SECRET_KEY", ""),
            s3_secure=os.environ.get("MINIO_SECURE", "0") == "1",
            cache_dir=os.environ.get("MONTESSORI_CACHE_DIR", os.path.expanduser("~/.cache/montessori")),
            judge_api_key=os.environ.get("MONTESSORI_JUDGE_API_KEY") or None,
            s3_ca_file=os.environ.get("MINIO_CA_FILE", ""),
            s3_server_name=os.environ.get("MINIO_SERVER_NAME", ""),
            tls_dir=os.environ.get("MONTESSORI_TLS_DIR", ""),
            token=os.environ.get("MONTESSORI_TOKEN", ""),
            token_file=os.environ.get("MONTESSORI_TOKEN_FILE", ""),
            server_name=os.environ.get("MONTESSORI_SERVER_NAME", ""),
            model_roots=tuple(p for p in os.environ.get("MONTESSORI_MODEL_ROOTS", "").split(os.pathsep) if p),
            pod_name=os.environ.get("POD_NAME", ""),
            pod_namespace=os.environ.get("POD_NAMESPACE", "montessori"),
            rank=int(os.environ.get("RANK", "0")),
        )

    def __repr__(self) -> str:  # the secret key must never reach a log line
        return f"Env(models_dir={self.models_dir!r}, s3_endpoint={self.s3_endpoint!r}, cache_dir={self.cache_dir!r})"
