"""Transport security and client authentication: mutual TLS between the controller and the
workers, bearer tokens (a token file, or Kubernetes TokenReview) on the controller, the plaintext
health-only port, and ``montessori serve`` refusing to guess between TLS and plaintext.

Workers run in process on loopback (their TLS server is ``ServiceServer``'s); controllers run as
the real ``montessori serve`` entry point, with worker addresses nobody listens on (no test here
reaches a worker through them)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cli.local_services import local_credentials, wait_serving
from common.auth import StaticTokens
from common.errors import InvalidArgument
from common.grpc_server import ServerConfig
from common.service_main import start_service
from common.transport import CA_FILE, CERT_FILE, KEY_FILE, PLAINTEXT, ClientTransport, generate_local_pki
from montessori.v1 import common_pb2, controller_pb2, controller_pb2_grpc, preference_pb2_grpc
from tests.conftest import REPO
from tests.integration.conftest import free_ports
from tests.integration.lease_api import LeaseAPI

WORKER = "preference"
CONTROLLER = "montessori.v1.ControllerService"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A local CA with certificates for the controller, a worker and an identity no worker allows,
    and a second CA with its own "controller" certificate."""
    root = tmp_path_factory.mktemp("pki")
    generate_local_pki(root / "tls", ["controller", WORKER, "intruder"])
    generate_local_pki(root / "other", ["controller"])
    return root


@pytest.fixture(scope="module")
def worker(pki, tmp_path_factory):
    from services.preference.servicer import build

    store = tmp_path_factory.mktemp("worker-store")
    config = ServerConfig(artifacts=str(store), tls_dir=str(pki / "tls" / WORKER), insecure=False, grace_seconds=1)
    service = start_service(WORKER, config, build)
    yield f"127.0.0.1:{service.port}"
    service.stop()


def get_job(channel) -> grpc.StatusCode:
    """The status of GetJob for an unknown job: NOT_FOUND once a call is let through."""
    with channel:
        try:
            preference_pb2_grpc.PreferenceServiceStub(channel).GetJob(common_pb2.GetJobRequest(job_id="x"), timeout=10)
        except grpc.RpcError as err:
            return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def test_worker_refuses_a_plaintext_client(worker):
    assert get_job(PLAINTEXT.channel(worker))[0] == grpc.StatusCode.UNAVAILABLE


def test_worker_refuses_a_client_without_a_certificate(worker, pki):
    assert get_job(ClientTransport(tls_dir=str(pki / "tls" / "controller")).channel(worker))[0] == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_worker_refuses_a_certificate_from_another_ca(worker, pki):
    # The client trusts the worker's CA (so the server side of the handshake succeeds) but presents
    # a "controller" certificate signed by another CA.
    other = pki / "other" / "controller"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "tls" / CA_FILE).read_bytes(),
        private_key=(other / KEY_FILE).read_bytes(),
        certificate_chain=(other / CERT_FILE).read_bytes(),
    )
    assert get_job(grpc.secure_channel(worker, credentials))[0] == grpc.StatusCode.UNAVAILABLE


def test_worker_accepts_only_allowed_identities(worker, pki):
    code, details = get_job(ClientTransport(tls_dir=str(pki / "tls" / "intruder"), client_cert=True).channel(worker))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "intruder" in details
    code, details = get_job(ClientTransport(tls_dir=str(pki / "tls" / "controller"), client_cert=True).channel(worker))
    assert code == grpc.StatusCode.NOT_FOUND, details  # let through: the job is unknown


def test_the_controllers_worker_channels_use_a_client_certificate_renewed_in_place(worker, pki, tmp_path):
    """cert-manager renews the controller's certificate in its folder; a loop's executor, made before, reconnects
    with the new one (here: an identity the worker refuses, replaced by the controller's)."""
    import shutil

    from services.controller.remote import RemoteExecutor, WorkerAddresses

    folder = tmp_path / "controller-tls"
    shutil.copytree(pki / "tls" / "intruder", folder)
    transport = ClientTransport(tls_dir=str(folder), client_cert=True)
    addresses = WorkerAddresses(
        teacher=worker, influence=worker, preference=worker, trainer=worker, transport=transport
    )
    executor = RemoteExecutor(None, addresses, request_prefix="renewal")
    request = common_pb2.GetJobRequest(job_id="x")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            executor._stub("preference").GetJob(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for name in (CERT_FILE, KEY_FILE):  # replaced in place, as a renewal does
            (folder / name).write_bytes((pki / "tls" / "controller" / name).read_bytes())
            os.utime(folder / name, ns=(1, 1))  # a changed version even within one clock tick
        with pytest.raises(grpc.RpcError) as let_through:
            executor._stub("preference").GetJob(request, timeout=10)
        assert let_through.value.code() == grpc.StatusCode.NOT_FOUND  # the job is unknown: the call got through
    finally:
        executor.close()


# -- the controller ----------------------------------------------------------------------------


def serve_controller(tmp: Path, *flags: str) -> tuple[subprocess.Popen, int, int]:
    port, health_port, dead = free_ports(3)
    workers = [
        arg for w in ("teacher", "influence", "preference", "trainer") for arg in (f"--{w}", f"127.0.0.1:{dead}")
    ]
    with open(tmp / f"controller-{port}.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "controller", "--port", str(port), "--health-port"]
            + [str(health_port), "--artifacts", str(tmp / "store"), "--grace", "2", *workers, *flags],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MONTESSORI_TORCH_THREADS": "1"},
        )
    return process, port, health_port


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def controllers(pki, tmp_path_factory):
    """Two controllers started together: one with the local token file (``make up``'s), one with
    TokenReview against a fake API server and an access file."""
    tmp = tmp_path_factory.mktemp("controllers")
    tls, tokens = local_credentials(tmp / "run")
    api = LeaseAPI()
    api.tokens = {
        "sa-token": ("system:serviceaccount:ops:runner", ["system:serviceaccounts", "system:serviceaccounts:ops"]),
        "alice-token": ("alice", ["system:authenticated"]),
        "bob-token": ("bob", ["system:authenticated", "devs"]),
    }
    access = tmp / "access.yaml"
    access.write_text("write: [system:serviceaccounts:ops]\nread: [alice]\n")
    static = serve_controller(tmp, "--tls-dir", str(tls / "controller"), "--token-file", str(tokens))
    review = serve_controller(
        tmp,
        "--tls-dir",
        str(tls / "controller"),
        "--token-review",
        "--kube-api",
        api.url,
        "--access-file",
        str(access),
    )
    client = ClientTransport(tls_dir=str(tls))  # the CA only, as a CLI has
    try:
        for process, port, _ in (static, review):
            wait_serving(f"127.0.0.1:{port}", timeout=120, process=process, transport=client)
        yield {
            "static": f"127.0.0.1:{static[1]}",
            "static_health": f"127.0.0.1:{static[2]}",
            "review": f"127.0.0.1:{review[1]}",
            "tls": tls,
            "run": tmp / "run",
            "api": api,
        }
    finally:
        stop(static[0])
        stop(review[0])
        api.close()


def call(address: str, tls: Path | None, token: str, method: str, request=None) -> grpc.StatusCode:
    """The status of one controller call (over TLS with ``tls``'s CA, or plaintext without it)."""
    transport = ClientTransport(tls_dir=str(tls or ""), insecure=tls is None, token=token)
    with transport.channel(address) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        default = {
            "StartLoop": controller_pb2.StartLoopRequest(),  # no spec: INVALID_ARGUMENT once through
            "StopLoop": controller_pb2.StopLoopRequest(loop_id="nope"),
            "GetLoop": controller_pb2.GetLoopRequest(loop_id="nope"),
            "ListLoops": controller_pb2.ListLoopsRequest(),
        }
        try:
            getattr(stub, method)(request or default[method], timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def token(run: Path, name: str) -> str:
    return (run / name).read_text().strip()


def test_controller_requires_a_token_with_the_right_role(controllers):
    address, tls, run = controllers["static"], controllers["tls"], controllers["run"]
    write, read = token(run, "token"), token(run, "token-read")
    for method in ("ListLoops", "GetLoop", "StartLoop", "StopLoop"):
        assert call(address, tls, "", method) == grpc.StatusCode.UNAUTHENTICATED, method
        assert call(address, tls, "not-a-token", method) == grpc.StatusCode.UNAUTHENTICATED, method
    assert call(address, tls, read, "ListLoops") == grpc.StatusCode.OK
    assert call(address, tls, read, "GetLoop") == grpc.StatusCode.NOT_FOUND
    assert call(address, tls, read, "StartLoop") == grpc.StatusCode.PERMISSION_DENIED
    assert call(address, tls, read, "StopLoop") == grpc.StatusCode.PERMISSION_DENIED
    assert call(address, tls, write, "ListLoops") == grpc.StatusCode.OK  # write implies read
    assert call(address, tls, write, "StartLoop") == grpc.StatusCode.INVALID_ARGUMENT  # past authorisation
    assert call(address, tls, write, "StopLoop") == grpc.StatusCode.NOT_FOUND


def test_controller_health_needs_no_token_and_reflection_needs_one(controllers):
    address, tls, run = controllers["static"], controllers["tls"], controllers["run"]
    with ClientTransport(tls_dir=str(tls)).channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=CONTROLLER))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert reflected_services(ClientTransport(tls_dir=str(tls)).channel(address)) == grpc.StatusCode.UNAUTHENTICATED
    names = reflected_services(ClientTransport(tls_dir=str(tls), token=token(run, "token-read")).channel(address))
    assert CONTROLLER in names


def test_controller_refuses_plaintext_and_an_unknown_ca(controllers, pki):
    address, run = controllers["static"], controllers["run"]
    write = token(run, "token")
    assert call(address, pki / "other", write, "ListLoops") == grpc.StatusCode.UNAVAILABLE
    assert call(address, None, write, "ListLoops") == grpc.StatusCode.UNAVAILABLE


def reflected_services(channel):
    with channel:
        try:
            responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            return [s.name for r in responses for s in r.list_services_response.service]
        except grpc.RpcError as err:
            return err.code()


def test_health_port_is_plaintext_and_serves_health_only(controllers):
    address = controllers["static_health"]
    with PLAINTEXT.channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    write = token(controllers["run"], "token")
    assert call(address, None, write, "ListLoops") == grpc.StatusCode.UNIMPLEMENTED
    assert reflected_services(PLAINTEXT.channel(address)) == grpc.StatusCode.UNIMPLEMENTED


def test_token_review_maps_users_and_groups_to_roles(controllers):
    address, tls, api = controllers["review"], controllers["tls"], controllers["api"]
    assert call(address, tls, "sa-token", "StartLoop") == grpc.StatusCode.INVALID_ARGUMENT  # group in write
    assert call(address, tls, "alice-token", "ListLoops") == grpc.StatusCode.OK  # user in read
    assert call(address, tls, "alice-token", "StopLoop") == grpc.StatusCode.PERMISSION_DENIED
    assert call(address, tls, "bob-token", "ListLoops") == grpc.StatusCode.PERMISSION_DENIED  # authenticated, no role
    assert call(address, tls, "forged-token", "ListLoops") == grpc.StatusCode.UNAUTHENTICATED  # review says no
    assert call(address, tls, "", "ListLoops") == grpc.StatusCode.UNAUTHENTICATED
    reviews = api.reviews
    for _ in range(3):
        assert call(address, tls, "alice-token", "ListLoops") == grpc.StatusCode.OK
    assert api.reviews == reviews  # reviews are cached


def test_loop_cli_sends_the_token_over_tls(controllers):
    tls, run = controllers["tls"], controllers["run"]
    base = [sys.executable, "-m", "cli.main", "loop", "--controller", controllers["static"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONTESSORI_TOKEN")}
    env["MONTESSORI_TLS_DIR"] = str(tls)
    listed = subprocess.run(
        [*base, "--token-file", str(run / "token-read"), "list"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr
    refused = subprocess.run(
        [*base, "stop", "x"],
        cwd=REPO,
        env={**env, "MONTESSORI_TOKEN": token(run, "token-read")},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr, refused.stderr


def test_serve_without_tls_or_insecure_exits_2_naming_the_flag(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MONTESSORI_TLS_DIR"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "teacher", "--port", "0", "--artifacts", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tls-dir" in lines[0] and "--insecure" in lines[0], result.stderr


def test_token_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "tokens.csv"
    path.write_text("# comment\nabc,alice,write\ndef,bob,admin\n")
    with pytest.raises(InvalidArgument, match=rf"{path}:3: role must be read or write"):
        StaticTokens.from_file(path)
    path.write_text("abc,alice,write\nabc,bob,read\n")
    with pytest.raises(InvalidArgument, match=rf"{path}:2: token repeats"):
        StaticTokens.from_file(path)
    path.write_text("abc,alice\n")
    with pytest.raises(InvalidArgument, match=rf"{path}:1: expected token,name,role"):
        StaticTokens.from_file(path)
    path.write_text("abc,alice,write\n")
    tokens = StaticTokens.from_file(path)
    assert tokens.authenticate("abc").role == "write" and tokens.authenticate("abd") is None


def test_local_services_run_with_mutual_tls_and_tokens(tiny_models, tmp_path):
    """``make up``'s set-up: the controller validates a loop's every stage on the four workers
    (validate_only requests over mutual TLS with its certificate) before StartLoop answers."""
    from cli.local_services import ORDER, start_services, stop_services
    from tests.integration.test_services import tiny_spec

    tls, tokens = local_credentials(tmp_path / "run")
    ports = dict(zip(ORDER, free_ports(len(ORDER))))
    processes = start_services(
        artifacts=str(tmp_path / "store"), ports=ports, log_dir=tmp_path / "logs", tls=tls, token_file=tokens
    )
    try:
        client = ClientTransport(tls_dir=str(tls), token=token(tmp_path / "run", "token"))
        with client.channel(f"127.0.0.1:{ports['controller']}") as channel:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            loop = stub.StartLoop(
                controller_pb2.StartLoopRequest(spec=tiny_spec(tiny_models, name="mtls")), timeout=120
            )
            assert loop.loop.loop_id
            stub.StopLoop(controller_pb2.StopLoopRequest(loop_id=loop.loop.loop_id), timeout=60)
        for worker in ("teacher", "trainer"):  # plaintext to a worker: no handshake
            assert get_job(PLAINTEXT.channel(f"127.0.0.1:{ports[worker]}"))[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_services(processes, timeout=30)
