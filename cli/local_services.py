"""The five services as local processes on loopback (``make up`` / ``make down``, and the tests).

``up`` starts each service with ``montessori serve``, writes its pid to ``.run/<service>.pid``
and its JSON log to ``.run/<service>.log``, and returns once every health check is SERVING.
``down`` sends SIGTERM (graceful: jobs are cancelled cleanly), then SIGKILL after a timeout.
``up`` serves with mutual TLS and bearer tokens: a local CA and one certificate per service in
``.run/tls/``, and ``.run/tokens.csv`` (one write and one read token; ``.run/token`` holds the write
token), made once and kept; ``--insecure`` serves plaintext instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.envs import DEFAULT_PORTS
from common.health import health_status
from common.transport import PLAINTEXT, ClientTransport, generate_local_pki

WORKERS = ("teacher", "influence", "preference", "trainer")
ORDER = (*WORKERS, "controller")


def wait_serving(
    address: str,
    *,
    timeout: float,
    process: subprocess.Popen | None = None,
    transport: ClientTransport = PLAINTEXT,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(address, transport=transport) == "SERVING":
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"service at {address} exited with code {process.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"service at {address} not SERVING after {timeout:.0f} s")


def start_services(
    *,
    artifacts: str,
    ports: dict[str, int],
    log_dir: Path,
    metrics_ports: dict[str, int] | None = None,
    extra: dict[str, list[str]] | None = None,
    env: dict | None = None,
    timeout: float = 120.0,
    python: dict[str, str] | None = None,
    tls: Path | None = None,
    token_file: Path | None = None,
) -> dict[str, subprocess.Popen]:
    """Start every service (workers first), each in its own process group; wait until all are SERVING.
    ``python`` names another interpreter for a service (the vLLM teacher runs from .venv-vllm).
    ``tls``: a ``generate_local_pki`` folder: mutual TLS, and the controller checks the tokens of
    ``token_file`` (required then); without it, plaintext (``--insecure``, development and tests)."""
    if tls is not None and token_file is None:
        raise ValueError("token_file is required with tls")
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    for name in ORDER:
        command = [
            (python or {}).get(name, sys.executable),
            "-m",
            "cli.main",
            "serve",
            name,
            "--host",
            "127.0.0.1",
            "--port",
            str(ports[name]),
            "--artifacts",
            artifacts,
            "--metrics-port",
            str((metrics_ports or {}).get(name, 0)),
        ]
        command += ["--tls-dir", str(tls / name)] if tls is not None else ["--insecure"]
        if name == "controller":
            for worker in WORKERS:
                command += [f"--{worker}", f"127.0.0.1:{ports[worker]}"]
            if token_file is not None:
                command += ["--token-file", str(token_file)]
        command += (extra or {}).get(name, [])
        with open(log_dir / f"{name}.log", "ab") as log:
            processes[name] = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=Path(__file__).resolve().parents[1],
            )
    # Health needs no token; the workers' TLS ports need a client certificate: the controller's.
    probe = ClientTransport(tls_dir=str(tls / "controller"), client_cert=True) if tls is not None else PLAINTEXT
    try:
        for name in ORDER:
            wait_serving(f"127.0.0.1:{ports[name]}", timeout=timeout, process=processes[name], transport=probe)
    except Exception:
        stop_services(processes, timeout=10)
        raise
    return processes


def stop_services(processes: dict[str, subprocess.Popen], *, timeout: float = 30.0) -> dict[str, int]:
    """SIGTERM every process group, SIGKILL what is left after ``timeout``; returns exit codes."""
    for process in processes.values():
        _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            codes[name] = process.wait()
    return codes


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the five services on loopback.")
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--run-dir", default=".run")
    parser.add_argument(
        "--teacher-backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="vllm: the teacher runs from .venv-vllm with a vLLM engine (adapter hot-swap)",
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext, no tokens (development only)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.action == "up":
        running = [n for n in ORDER if _listening(DEFAULT_PORTS[n])]
        if running:
            print(f"already running: {', '.join(running)} (make down first)", file=sys.stderr)
            return 1
        vllm = args.teacher_backend == "vllm"
        tls, tokens = (None, None) if args.insecure else local_credentials(run_dir)
        processes = start_services(
            artifacts=str(Path(args.artifacts).resolve()),
            ports=DEFAULT_PORTS,
            log_dir=run_dir,
            metrics_ports={n: 9100 + i for i, n in enumerate(ORDER)},
            extra={"teacher": ["--backend", "vllm"]} if vllm else None,
            python={"teacher": str(Path(".venv-vllm/bin/python").absolute())} if vllm else None,
            timeout=300.0 if vllm else 120.0,
            tls=tls,
            token_file=tokens,
        )
        for name, process in processes.items():
            (run_dir / f"{name}.pid").write_text(str(process.pid))
            print(f"{name:<11} 127.0.0.1:{DEFAULT_PORTS[name]}  pid {process.pid}  log {run_dir / (name + '.log')}")
        if tls is not None:
            port = DEFAULT_PORTS["controller"]
            print(
                f"\nmutual TLS (CA {tls / 'ca.crt'}); controller tokens in {tokens} "
                f"(write token in {run_dir / 'token'})."
                f"\nCall the controller:\n  export MONTESSORI_TLS_DIR={tls} MONTESSORI_TOKEN_FILE={run_dir / 'token'}"
                "\n  montessori loop list"
                f'\n  grpcurl -cacert {tls / "ca.crt"} -H "authorization: Bearer $(cat {run_dir / "token"})" '
                f"-import-path protos -proto montessori/v1/controller.proto localhost:{port} "
                "montessori.v1.ControllerService/ListLoops"
            )
        return 0
    pids = {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}
    for _name, pid in pids.items():
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    for name, pid in pids.items():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
        (run_dir / f"{name}.pid").unlink(missing_ok=True)
        print(f"{name:<11} stopped")
    return 0


def local_credentials(run_dir: Path) -> tuple[Path, Path]:
    """``run_dir/tls`` (a CA and a certificate per service) and ``run_dir/tokens.csv`` (a write and a
    read token; ``run_dir/token`` holds the write one, ``run_dir/token-read`` the read one), each made
    once and then kept, so clients configured earlier keep working."""
    tls = run_dir / "tls"
    if not all((tls / name / "tls.key").is_file() for name in ORDER):
        generate_local_pki(tls, ORDER)
    tokens = run_dir / "tokens.csv"
    if not tokens.is_file():
        write, read = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        _write_secret(
            tokens, f"# token,name,role (montessori local)\n{write},local-writer,write\n{read},local-reader,read\n"
        )
        _write_secret(run_dir / "token", write + "\n")
        _write_secret(run_dir / "token-read", read + "\n")
    return tls, tokens


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _listening(port: int) -> bool:
    """Something accepts connections on loopback ``port`` (whatever its transport security)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is not alive
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


if __name__ == "__main__":
    sys.exit(main())
