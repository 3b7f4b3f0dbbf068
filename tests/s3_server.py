"""A real S3-compatible server on 127.0.0.1 for tests: a MinIO binary when one is available
(on PATH or named by MINIO_BINARY), else nanio (PyPI, installed by `make setup`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path
    kind: str
    process: subprocess.Popen

    def env(self, bucket_cache: Path) -> dict[str, str]:
        return {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
            "MINIO_SECURE": "0",
            "MONTESSORI_CACHE_DIR": str(bucket_cache),
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server(
    data_dir: Path, *, access_key: str = "montessori-test", secret_key: str = "s3cr3t-test-key-123"
) -> S3Server:
    port = _free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    minio = os.environ.get("MINIO_BINARY") or shutil.which("minio")
    if minio:
        env = {**os.environ, "MINIO_ROOT_USER": access_key, "MINIO_ROOT_PASSWORD": secret_key}
        command, kind = [minio, "server", str(data_dir), "--address", f"127.0.0.1:{port}", "--quiet"], "minio"
    else:
        env = {**os.environ, "NANIO_ACCESS_KEY": access_key, "NANIO_SECRET_KEY": secret_key}
        nanio = Path(sys.executable).with_name("nanio")
        command, kind = (
            [str(nanio), "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
            "nanio",
        )
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise TimeoutError(f"{kind} did not listen on {port}")
    return S3Server(f"127.0.0.1:{port}", access_key, secret_key, data_dir, kind, process)
