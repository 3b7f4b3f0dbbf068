"""Build the container images and smoke-test them, one target at a time, and record what happened.

For each target (cpu, cuda, vllm): ``make images TARGETS=<target> <make settings>`` timed (its log under
build/images-<target>.log), the image's size (``<container> image inspect``, as ``podman image ls`` shows it),
then ``scripts/image-smoke.sh <target>=<image>`` with ``SMOKE_OUT`` set, whose files (the entrypoint's
``--help``, the imports' JSON, the GPU service's output and exit status, the CPU checks' seconds) are read back.
The results are merged into the JSON file (one entry per target, so targets can be measured in separate runs).

  python bench/images.py --targets cpu cuda vllm --out bench/results/images-podman.json -- \\
      CONTAINER=podman PODMAN_ISOLATION=chroot CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\
      PYTHON_IMAGE=localhost/python-bookworm:3.11 TORCH_WHEELS=/opt/wheels CUDA_TORCH_INDEX=https://pypi.org/simple

``--no-build`` smoke-tests what is there; ``--no-smoke`` only builds; ``--prune`` runs ``image prune`` after each
build (the stages' dangling layers: GBs for the CUDA targets). Needs root (the smoke test's chroot).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("cpu", "cuda", "vllm")


def make_value(settings: list[str], name: str) -> str:
    """The value a ``make -n``-free reading of the Makefile gives ``name`` under ``settings`` (``make -pn``)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "-f", "Makefile", "-f", "-", *settings, "print-value"],
        input=f"print-value:\n\t@echo '$({name})'\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return result.stdout.strip()


def disk_free_gb() -> float:
    return round(shutil.disk_usage("/").free / 1e9, 1)


def image_size(container: str, image: str) -> int | None:
    result = subprocess.run(
        [container, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True
    )
    return int(result.stdout.strip()) if result.returncode == 0 else None


def image_ls_size(container: str, image: str) -> str | None:
    """The SIZE column of ``<container> image ls`` for ``image`` (as a person reads it)."""
    result = subprocess.run(
        [container, "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}"], capture_output=True, text=True
    )
    for line in result.stdout.splitlines():
        name, _, size = line.partition(" ")
        if name == image:
            return size
    return None


def build(target: str, settings: list[str], container: str, prune: bool) -> dict:
    log = REPO / "build" / f"images-{target}.log"
    log.parent.mkdir(exist_ok=True)
    command = ["make", "images", f"TARGETS={target}", *settings]
    free_before = disk_free_gb()
    start = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = round(time.monotonic() - start, 1)
    entry = {
        "command": " ".join(command),
        "exit_status": rc,
        "seconds": seconds,
        "disk_free_gb_before": free_before,
        "disk_free_gb_after": disk_free_gb(),
        "log": str(log.relative_to(REPO)),
    }
    if rc != 0:
        entry["log_tail"] = log.read_text(errors="replace").splitlines()[-40:]
    if prune:
        subprocess.run([container, "image", "prune", "-f"], capture_output=True)
        entry["disk_free_gb_after_prune"] = disk_free_gb()
    return entry


def smoke(target: str, image: str, container: str, loop: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"smoke-{target}-"))
    env = dict(os.environ, CONTAINER=container, SMOKE_OUT=str(out), SMOKE_LOOP="1" if loop else "0")
    start = time.monotonic()
    result = subprocess.run(
        [str(REPO / "scripts" / "image-smoke.sh"), f"{target}={image}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    entry: dict = {"exit_status": result.returncode, "seconds": round(time.monotonic() - start, 1)}
    found = out / target

    def read(name: str) -> str | None:
        path = found / name
        return path.read_text(errors="replace").strip() if path.exists() else None

    if (text := read("help.txt")) is not None:
        entry["help"] = {"exit_status": int(read("help.rc") or -1), "first_line": text.splitlines()[0] if text else ""}
    if (user := read("user.txt")) is not None:
        entry["user"] = user
    if (text := read("imports.json")) is not None:
        entry["imports"] = json.loads(text)
    if (text := read("device.out")) is not None:
        entry["gpu_service_without_gpu"] = {
            "command": read("device.cmd"),
            "exit_status": int(read("device.rc") or -1),
            "output": text.splitlines(),
        }
    if (text := read("serving.s")) is not None:
        entry["teacher_serving_within_s"] = int(text)
    if (text := read("loop.s")) is not None:
        entry["tiny_loop_s"] = int(text)
    if result.returncode != 0:
        entry["output_tail"] = (result.stdout + result.stderr).splitlines()[-40:]
    shutil.rmtree(out, ignore_errors=True)
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--out", default="bench/results/images-podman.json")
    parser.add_argument("--no-build", action="store_true", help="smoke-test the images already built")
    parser.add_argument("--no-smoke", action="store_true")
    parser.add_argument("--no-loop", action="store_true", help="cpu: leave out the tiny loop (5-8 minutes)")
    parser.add_argument("--prune", action="store_true", help="`image prune` after each build")
    parser.add_argument("settings", nargs="*", help="make settings (after --): CONTAINER=podman ...")
    args = parser.parse_args()

    container = make_value(args.settings, "CONTAINER")
    out = REPO / args.out
    version = subprocess.run([container, "--version"], capture_output=True, text=True).stdout.strip()
    header = {
        "what": "bench/images.py: each target built with `make images TARGETS=<target>` and smoke-tested with "
        "scripts/image-smoke.sh (the image mounted, its programs run under chroot: no container runs here)",
        "container": version,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "make_settings": args.settings,
    }

    def save(target: str, entry: dict) -> None:
        # read again: another run may have recorded another target meanwhile
        report = json.loads(out.read_text()) if out.exists() else {}
        report.update(header)
        report.setdefault("targets", {})[target] = entry
        report["targets"] = {t: report["targets"][t] for t in TARGETS if t in report["targets"]}
        out.write_text(json.dumps(report, indent=2) + "\n")

    failed = False
    for target in args.targets:
        image = make_value(args.settings, f"IMAGE_{target}")
        previous = json.loads(out.read_text()).get("targets", {}) if out.exists() else {}
        entry = previous.get(target, {})
        entry["image"] = image
        entry["when"] = datetime.now(UTC).isoformat(timespec="seconds")
        if not args.no_build:
            print(f"== build {target}: {image}", flush=True)
            entry["build"] = build(target, args.settings, container, args.prune)
            print(f"   {entry['build']['seconds']} s, exit {entry['build']['exit_status']}", flush=True)
            if entry["build"]["exit_status"] != 0:
                failed = True
                save(target, entry)
                continue
        size = image_size(container, image)
        entry["size_bytes"] = size
        entry["size_gb"] = round(size / 1e9, 2) if size else None
        entry["image_ls_size"] = image_ls_size(container, image)
        save(target, entry)
        if size is not None and not args.no_smoke:
            print(f"== smoke {target}", flush=True)
            entry["smoke"] = smoke(target, image, container, loop=not args.no_loop)
            print(f"   exit {entry['smoke']['exit_status']} in {entry['smoke']['seconds']} s", flush=True)
            failed |= entry["smoke"]["exit_status"] != 0
        save(target, entry)
    print(f"wrote {out.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
