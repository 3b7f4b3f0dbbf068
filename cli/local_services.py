"""The five services as local processes on loopback (``make up`` / ``make down``, and the tests).

``up`` starts each service with ``montessori serve``, writes its pid to ``.run/<service>.pid``
and its JSON log to ``.run/<service>.log``, and returns once every health check is SERVING.
``down`` sends SIGTERM (graceful: jobs are cancelled cleanly), then SIGKILL after a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.envs import DEFAULT_PORTS
from common.health import health_status

WORKERS = ("teacher", "influence", "preference", "trainer")
ORDER = (*WORKERS, "controller")


def wait_serving(address: str, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(address) == "SERVING":
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
) -> dict[str, subprocess.Popen]:
    """Start every service (workers first), each in its own process group; wait until all are SERVING.
    ``python`` names another interpreter for a service (the vLLM teacher runs from .venv-vllm)."""
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
        if name == "controller":
            for worker in WORKERS:
                command += [f"--{worker}", f"127.0.0.1:{ports[worker]}"]
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
    try:
        for name in ORDER:
            wait_serving(f"127.0.0.1:{ports[name]}", timeout=timeout, process=processes[name])
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
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if args.action == "up":
        running = [n for n in ORDER if health_status(f"127.0.0.1:{DEFAULT_PORTS[n]}") != "UNREACHABLE"]
        if running:
            print(f"already running: {', '.join(running)} (make down first)", file=sys.stderr)
            return 1
        vllm = args.teacher_backend == "vllm"
        processes = start_services(
            artifacts=str(Path(args.artifacts).resolve()),
            ports=DEFAULT_PORTS,
            log_dir=run_dir,
            metrics_ports={n: 9100 + i for i, n in enumerate(ORDER)},
            extra={"teacher": ["--backend", "vllm"]} if vllm else None,
            python={"teacher": str(Path(".venv-vllm/bin/python").absolute())} if vllm else None,
            timeout=300.0 if vllm else 120.0,
        )
        for name, process in processes.items():
            (run_dir / f"{name}.pid").write_text(str(process.pid))
            print(f"{name:<11} 127.0.0.1:{DEFAULT_PORTS[name]}  pid {process.pid}  log {run_dir / (name + '.log')}")
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
