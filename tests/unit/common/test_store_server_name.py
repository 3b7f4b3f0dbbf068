"""MINIO_SERVER_NAME: a store reached through a port-forward (127.0.0.1) is verified against the name its
certificate carries (``minio``), not skipped and not refused. A loopback HTTPS server with a certificate for
``minio`` only stands in for MinIO behind ``kubectl port-forward svc/minio 9000``."""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.errors import Unavailable
from common.s3_store import S3ArtifactStore

#: GetBucketLocation's answer (the minio client asks it before anything else).
LOCATION = '<?xml version="1.0" encoding="UTF-8"?><LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/">us-east-1</LocationConstraint>'


def _certificate(subject: str, key, issuer_key, issuer: x509.Name | None, *, ca: bool, dns: list[str]):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def store_behind_a_port_forward(tmp_path_factory):
    """(ca.crt path, 127.0.0.1:port) of an HTTPS server whose certificate names only ``minio``: it answers the
    client's bucket-location GET and a HEAD of the bucket (it exists)."""
    folder = tmp_path_factory.mktemp("minio-tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test-ca", ca_key, ca_key, None, ca=True, dns=[])
    leaf = _certificate("minio", key, ca_key, ca.subject, ca=False, dns=["minio", "minio.montessori.svc"])
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802 - the http.server API
            body = LOCATION.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder / "ca.crt", f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _open(endpoint: str, tmp_path) -> S3ArtifactStore:
    return S3ArtifactStore(
        endpoint=endpoint,
        access_key="k",
        secret_key="s",
        bucket="montessori",
        secure=True,
        cache_dir=tmp_path / "cache",
        create_bucket=False,
        retries=0,
        timeout=5.0,
    )


def test_the_certificate_is_checked_against_minio_server_name(store_behind_a_port_forward, tmp_path, monkeypatch):
    ca_file, endpoint = store_behind_a_port_forward
    monkeypatch.setenv("MINIO_CA_FILE", str(ca_file))
    monkeypatch.setenv("MINIO_SERVER_NAME", "minio")
    assert _open(endpoint, tmp_path).bucket == "montessori"  # the bucket exists: TLS verified


def test_without_it_the_address_must_be_in_the_certificate(store_behind_a_port_forward, tmp_path, monkeypatch):
    ca_file, endpoint = store_behind_a_port_forward
    monkeypatch.setenv("MINIO_CA_FILE", str(ca_file))
    monkeypatch.delenv("MINIO_SERVER_NAME", raising=False)
    with pytest.raises(Unavailable):  # OpenSSL's own check: the certificate names no IP address
        _open(endpoint, tmp_path)


def test_another_name_than_the_certificates_is_refused(store_behind_a_port_forward, tmp_path, monkeypatch, caplog):
    ca_file, endpoint = store_behind_a_port_forward
    monkeypatch.setenv("MINIO_CA_FILE", str(ca_file))
    monkeypatch.setenv("MINIO_SERVER_NAME", "not-minio")
    with pytest.raises(Unavailable):
        _open(endpoint, tmp_path)
    assert "did not match expected hostname: not-minio" in caplog.text
