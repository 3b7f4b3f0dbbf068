"""Transport security: TLS credentials from a folder, client channels, peer identities, a local CA.

A TLS folder has the layout of a cert-manager Secret: ``ca.crt`` (the CA that signs every
montessori certificate), ``tls.crt`` and ``tls.key`` (this component's certificate and key).
Workers require a client certificate signed by ``ca.crt`` (mutual TLS) and accept only the
identities they are told to (the controller); the controller's server takes TLS with client
certificates optional and authenticates callers by bearer token (``common/auth.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.errors import InvalidArgument
from common.logs import get_logger

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
#: Where ``make up`` writes its CA and one folder per service.
LOCAL_TLS_DIR = Path(".run") / "tls"
log = get_logger(__name__)


def _read(folder: str | Path, name: str, field: str) -> bytes:
    return read_file(Path(folder) / name, field)


def read_file(path: Path, field: str) -> bytes:
    """A credential file's bytes; an unreadable one is an InvalidArgument naming ``field``."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise InvalidArgument(f"cannot read {path}: {err.strerror or err}", field=field) from None


def server_credentials(
    folder: str | Path, *, require_client_cert: bool, field: str = "tls_dir"
) -> grpc.ServerCredentials:
    """TLS with this folder's certificate; client certificates are verified against its ``ca.crt``
    (required for workers, optional for the controller, whose callers send tokens). The folder is
    read again whenever its files change (:class:`ReloadingCertificates`): cert-manager renews a
    Secret in place, and the next handshake uses the new certificate without a restart."""
    certificates = ReloadingCertificates(folder, field=field)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial, certificates.fetch, require_client_authentication=require_client_cert
    )


class ReloadingCertificates:
    """A TLS folder's certificate configuration, read again when a file's identity (inode, size, mtime) changes.

    gRPC calls :meth:`fetch` before every TLS handshake: a ``stat`` of three files when nothing changed. A
    Secret volume is updated by swapping a symlink, so the three files change together; a folder that cannot
    be read (mid-update, or removed) keeps the current configuration and logs a warning.
    """

    def __init__(self, folder: str | Path, *, field: str = "tls_dir"):
        self.folder = Path(folder)
        self._signature = self._stat()
        self.initial = self._configuration(field)
        self._lock = threading.Lock()

    def _stat(self) -> tuple:
        try:
            return tuple(
                (s.st_ino, s.st_size, s.st_mtime_ns)
                for s in (os.stat(self.folder / name) for name in (CA_FILE, CERT_FILE, KEY_FILE))
            )
        except OSError:
            return ()

    def _configuration(self, field: str) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.folder, KEY_FILE, field), _read(self.folder, CERT_FILE, field))],
            root_certificates=_read(self.folder, CA_FILE, field),
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed since the last read, else None (keep the current one)."""
        signature = self._stat()
        with self._lock:
            if not signature or signature == self._signature:
                return None
            try:
                configuration = self._configuration("tls_dir")
                _check_key_pair(self.folder)
            except Exception as err:  # noqa: BLE001 - a half-written folder: keep serving the current certificate
                log.warning(
                    "TLS folder changed but cannot be read; keeping the current certificate",
                    extra={"metrics": {"folder": str(self.folder), "error": type(err).__name__}},
                )
                return None
            self._signature = signature
        log.info("TLS certificate reloaded", extra={"metrics": {"folder": str(self.folder)}})
        return configuration


def _check_key_pair(folder: Path) -> None:
    """ValueError unless ``tls.key`` is the key of ``tls.crt`` (gRPC would fail every handshake instead)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
    key = serialization.load_pem_private_key((folder / KEY_FILE).read_bytes(), password=None)
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise ValueError("tls.key does not match tls.crt")


@dataclass(frozen=True)
class ClientTransport:
    """How a client reaches a montessori server: TLS with ``tls_dir``'s ``ca.crt`` (and, with
    ``client_cert``, its ``tls.crt``/``tls.key`` as client certificate), or plaintext with
    ``insecure``; ``token`` is sent as ``authorization: Bearer`` on every call. Never logged."""

    tls_dir: str = ""
    insecure: bool = False
    client_cert: bool = False
    token: str = ""
    #: Name the server certificate must carry when it differs from the address's host (an IP).
    server_name: str = ""

    def __post_init__(self) -> None:
        if not self.tls_dir and not self.insecure:
            raise InvalidArgument("is required (a folder with ca.crt), or --insecure for plaintext", field="--tls-dir")

    def __repr__(self) -> str:  # the token must never reach a log line
        return f"ClientTransport(tls_dir={self.tls_dir!r}, insecure={self.insecure}, client_cert={self.client_cert})"

    def files_version(self) -> tuple:
        """What identifies the TLS files now (their names, sizes and modification times; () without TLS): a
        channel made before cert-manager renewed them in place is made again with the new ones."""
        if not self.tls_dir:
            return ()
        version = []
        for name in (CA_FILE, CERT_FILE, KEY_FILE):
            try:
                stat = (Path(self.tls_dir) / name).stat()
            except OSError:
                continue
            version.append((name, stat.st_size, stat.st_mtime_ns))
        return tuple(version)

    def credentials(self) -> grpc.ChannelCredentials:
        field = "--tls-dir"
        key = _read(self.tls_dir, KEY_FILE, field) if self.client_cert else None
        cert = _read(self.tls_dir, CERT_FILE, field) if self.client_cert else None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_dir, CA_FILE, field), private_key=key, certificate_chain=cert
        )

    def channel(self, address: str, options: Sequence[tuple[str, object]] = (), server_name: str = "") -> grpc.Channel:
        """A channel to ``address``; ``server_name`` overrides the name checked against the server
        certificate (a replica dialled by IP whose certificate names its Service)."""
        options = list(options)
        if self.tls_dir and (server_name or self.server_name):
            options.append(("grpc.ssl_target_name_override", server_name or self.server_name))
        if self.tls_dir:
            channel = grpc.secure_channel(address, self.credentials(), options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, _BearerToken(self.token))
        return channel


PLAINTEXT = ClientTransport(insecure=True)


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call. An interceptor rather than call
    credentials because gRPC refuses call credentials on a plaintext (``--insecure``) channel."""

    def __init__(self, token: str):
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _details(self, details):
        return details._replace(metadata=[*(details.metadata or ()), *self._metadata])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def add_client_flags(parser) -> None:
    """``--tls-dir``, ``--token-file``, ``--server-name`` and ``--insecure`` of every command calling the controller."""
    parser.add_argument(
        "--tls-dir",
        default=None,
        help="folder with the CA (ca.crt) that signed the controller's certificate (default $MONTESSORI_TLS_DIR)",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        help="file holding the bearer token (default $MONTESSORI_TOKEN, then $MONTESSORI_TOKEN_FILE)",
    )
    parser.add_argument(
        "--server-name",
        default=None,
        help="name the controller's certificate must carry when the address does not (a port-forward to "
        "127.0.0.1: --server-name controller; default $MONTESSORI_SERVER_NAME, else the address's host)",
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext to the controller (development only)")


def controller_transport(args) -> ClientTransport:
    """The transport of a command's ``add_client_flags``: flags, then the environment."""
    from common.envs import Env

    env = Env.read()
    tls_dir = "" if args.insecure else (args.tls_dir or env.tls_dir)
    if args.token_file:
        token = read_file(Path(args.token_file), "--token-file").decode().strip()
    elif env.token:
        token = env.token
    elif env.token_file:
        token = read_file(Path(env.token_file), "MONTESSORI_TOKEN_FILE").decode().strip()
    else:
        token = ""
    server_name = getattr(args, "server_name", None) or env.server_name
    return ClientTransport(tls_dir=tls_dir, insecure=args.insecure, token=token, server_name=server_name)


def peer_identities(context: grpc.ServicerContext) -> list[str]:
    """The verified client certificate's common name and DNS names (empty without one)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
    if not pem:
        return []
    cert = x509.load_pem_x509_certificate(pem)
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
    return [str(n) for n in names]


def generate_local_pki(folder: str | Path, services: Sequence[str], *, days: int = 365) -> Path:
    """A CA (``ca.crt``/``ca.key``) and one cert-manager-style folder per service (``<service>/ca.crt``,
    ``tls.crt``, ``tls.key``): common name the service, SANs the service, ``localhost`` and 127.0.0.1,
    usable as server and client certificate. For ``make up`` and tests; Kubernetes uses cert-manager."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "montessori-local-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (root / CA_FILE).write_bytes(ca_pem)
    _write_key(root / "ca.key", ca_key)
    for service in services:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(service),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        target = root / service
        target.mkdir(exist_ok=True)
        (target / CA_FILE).write_bytes(ca_pem)
        (target / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(target / KEY_FILE, key)
    return root


def _key_usage(*, cert_sign: bool):
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
