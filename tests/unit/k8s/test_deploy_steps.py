"""Every command of docs/deploy.md runs as written, as far as can be told without a cluster.

Each shell block is split into commands; each command is checked against what it names: files in this tree,
Makefile targets, Dockerfile stages, the ``montessori`` parser (every flag must exist), environment variables that
common/envs.py reads, and for kubectl the verb, its resource form (``rollout status`` needs one named object) and
the objects the overlay renders (a Job waited for, a Service port-forwarded, a Secret read). A redirect into a
folder needs that folder made first. The optional components render and set what they say.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.unit.k8s.test_manifests import K8S, REPO, _kustomize, _render, find, of_kind

DEPLOY = REPO / "docs" / "deploy.md"
#: kubectl verbs a deploy step may use, and whether the verb needs a cluster object named TYPE/NAME.
KUBECTL_VERBS = {"apply", "create", "wait", "get", "port-forward", "rollout", "delete", "label", "taint"}
#: Secrets that exist before any step creates them: cert-manager writes the CA's.
CERT_MANAGER_SECRETS = {"montessori-ca"}


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def commands(block: str) -> list[list[str]]:
    """Each simple command of a bash block as its words (continuations joined, comments and for/do/done dropped);
    control operators and redirections are kept as words of their own ('|', '&', '>')."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in ("|", "||", "&&", ";", "&"):
                if current and current[0] not in ("for", "done"):
                    out.append(current[1:] if current[0] == "do" else current)
                current = []
            else:
                current.append(word)
    return [c for c in out if c]


def _deploy_commands() -> list[list[str]]:
    return [command for block in shell_blocks(DEPLOY.read_text()) for command in commands(block)]


def test_the_splitter_reads_what_bash_reads():
    block = (
        'kubectl -n x get s -o jsonpath="{.a}" | base64 -d > tls/ca.crt\nfor s in a b; do\n  echo "$s" \\\n   y\ndone\n'
    )
    assert commands(block) == [
        ["kubectl", "-n", "x", "get", "s", "-o", "jsonpath={.a}"],
        ["base64", "-d", ">", "tls/ca.crt"],
        ["echo", "$s", "y"],
    ]


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict]]:
    return {overlay: _render(overlay) for overlay in ("gpu", "cpu-dev")}


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {m for line in re.findall(r"^([A-Za-z0-9_. -]+):(?!=)", text, re.M) for m in line.split()}


def _env_variables() -> set[str]:
    return set(re.findall(r"\b((?:MONTESSORI|MINIO)_[A-Z_]+)\b", (REPO / "common" / "envs.py").read_text()))


def _flag(words: list[str], name: str) -> str | None:
    for index, word in enumerate(words):
        if word == name and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _positionals(words: list[str]) -> list[str]:
    """kubectl's words that are not flags or flag values (every flag the steps use takes a value unless it is
    written ``--flag=value`` or is one of the boolean ones)."""
    boolean = {"--all", "--watch"}
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = "=" not in word and word not in boolean
        else:
            out.append(word)
    return out


def test_every_deploy_command_names_what_exists(overlays):
    made_folders: set[str] = set()
    secrets = set(CERT_MANAGER_SECRETS)
    accounts: set[str] = set()
    targets = _makefile_targets()
    env_variables = _env_variables()
    dockerfile = (REPO / "Dockerfile.base").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.M | re.I))
    from cli.main import make_parser

    checked = 0
    for words in _deploy_commands():
        program, args = words[0], words[1:]
        if ">" in args:  # a redirect writes into a folder that must exist by then
            target = args[args.index(">") + 1]
            folder = os.path.dirname(target)
            assert not folder or folder in made_folders, f"`> {target}` before `mkdir -p {folder}`"
            args = args[: args.index(">")]
        if program == "mkdir":
            made_folders.update(a for a in args if not a.startswith("-"))
        elif program == "make":
            for target in (a for a in args if "=" not in a and not a.startswith("-")):
                assert target in targets, f"make {target}: no such target"
        elif program == "export":
            for assignment in args:
                name = assignment.split("=", 1)[0]
                assert name in env_variables, f"export {name}: common/envs.py reads no such variable"
        elif program in ("docker", "podman"):
            assert args[0] == "build", words
            assert (REPO / _flag(args, "-f")).is_file(), words
            stage = _flag(args, "--target")
            assert stage is None or stage in stages, f"Dockerfile.base has no stage {stage}"
        elif program == "montessori":
            parsed = make_parser().parse_args(args)  # SystemExit (an unknown flag) fails the test
            for value in vars(parsed).values():
                if isinstance(value, str) and re.match(r"(k8s|configs|data)/", value):
                    assert (REPO / value).exists(), f"{' '.join(words)}: {value} does not exist"
        elif program == "kubectl":
            _check_kubectl(args, overlays, secrets, accounts)
        else:
            assert program in ("base64", "openssl", "echo"), f"unexpected program in a deploy step: {words}"
        checked += 1
    assert checked >= 20, checked


def _check_kubectl(args: list[str], overlays: dict, secrets: set[str], accounts: set[str]) -> None:
    namespace = _flag(args, "-n") or _flag(args, "--namespace")
    words = _positionals(args)
    verb, rest = words[0], words[1:]
    assert verb in KUBECTL_VERBS, f"kubectl {verb}: not a verb the steps may use"
    gpu = overlays["gpu"]
    if verb == "apply":
        kustomization = _flag(args, "-k")
        if kustomization:
            assert (REPO / kustomization / "kustomization.yaml").is_file(), kustomization
        else:
            assert _flag(args, "-f").startswith("https://"), args
    elif verb == "create":
        kind = rest[0]
        if kind == "secret":
            assert rest[1] == "generic", args
            name = rest[2].replace("$service", "controller")
            secrets.add(name)
            if namespace == "montessori":
                referenced = {ref["name"] for obj in gpu for ref in _secret_refs(obj)}
                assert name in referenced or name.startswith("montessori-store-"), f"secret {name} is not used"
        elif kind == "serviceaccount":
            accounts.add(rest[1])
        elif kind == "token":
            assert rest[1] in accounts, f"create token {rest[1]}: no such service account created before"
            duration = _flag(args, "--duration")
            assert duration is None or re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", duration), duration
        else:
            assert kind == "namespace", args
    elif verb == "wait":
        condition = _flag(args, "--for")
        assert condition and condition.startswith("condition="), args
        resource = rest[0]
        if "/" in resource:
            kind, name = resource.split("/")
            assert kind == "job", resource
            assert any(o["metadata"]["name"] == name for o in of_kind(overlays["gpu"] + overlays["cpu-dev"], "Job"))
        else:
            assert resource == "deploy" and "--all" in args, f"kubectl wait {resource}: name one or use --all"
        assert _flag(args, "--timeout"), args
    elif verb == "rollout":
        assert rest[0] == "status" and len(rest) == 2 and "/" in rest[1], (
            f"kubectl rollout status takes one TYPE/NAME, not {rest[1:]}"
        )
    elif verb == "port-forward":
        kind, name = rest[0].split("/")
        assert kind == "svc", rest
        service = find(gpu, "Service", name)
        ports = {p["port"] for p in service["spec"]["ports"]}
        assert int(rest[1].split(":")[0]) in ports, f"svc/{name} has ports {ports}, not {rest[1]}"
    elif verb == "get":
        kind, name = rest[0], rest[1]
        assert kind == "secret" and name in secrets, f"get secret {name}: nothing creates it"
        assert (_flag(args, "-o") or "").startswith("jsonpath="), args


def _secret_refs(obj: dict):
    """Every ``secretKeyRef`` and Secret volume of a rendered object."""
    if isinstance(obj, dict):
        if "secretKeyRef" in obj:
            yield obj["secretKeyRef"]
        if "secretName" in obj and "secret" in str(obj.get("secretName")):
            yield {"name": obj["secretName"]}
        for value in obj.values():
            yield from _secret_refs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _secret_refs(value)


def test_the_deploy_steps_use_no_etc_hosts_and_wait_for_every_deployment():
    text = DEPLOY.read_text()
    assert "/etc/hosts" not in "".join(shell_blocks(text))
    assert "rollout status deploy --" not in text
    assert "--server-name" in text or "MONTESSORI_SERVER_NAME" in text
    assert re.search(r"expires|lifetime", text) and "--duration" in text


@pytest.mark.parametrize(
    ("component", "kind", "check"),
    [
        (
            "minio-storage-class",
            "StatefulSet",
            lambda obj: obj["spec"]["volumeClaimTemplates"][0]["spec"].get("storageClassName") == "fast-ssd",
        ),
        ("nvidia-runtime", "Deployment", lambda obj: obj["spec"]["template"]["spec"].get("runtimeClassName")),
    ],
)
def test_the_optional_components_render_on_the_gpu_overlay(tmp_path, component, kind, check):
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "overlays" / "gpu", tmp_path)],
                "components": [os.path.relpath(K8S / "components" / component, tmp_path)],
            }
        )
    )
    objects = _kustomize(tmp_path, f"gpu + components/{component}")
    changed = {o["metadata"]["name"] for o in of_kind(objects, kind) if check(o)}
    if component == "nvidia-runtime":
        assert changed == {"teacher", "influence", "trainer"}
    else:
        assert changed == {"minio"}


def test_the_cpu_dev_run_config_names_the_models_the_seed_job_builds():
    from common.config import from_dict
    from services.controller.config import RunConfig
    from setup.offline_models import TINY_STUDENT_DIR, TINY_TEACHER_DIR

    example = K8S / "overlays" / "cpu-dev" / "examples" / "run-config.yaml"
    config = from_dict(RunConfig, yaml.safe_load(example.read_text()))
    seed = yaml.safe_load((K8S / "overlays" / "cpu-dev" / "jobs" / "models-seed.yaml").read_text())
    models_dir = _flag(seed["spec"]["template"]["spec"]["containers"][0]["args"], "--models-dir")
    assert config.models.teacher == f"{models_dir}/{TINY_TEACHER_DIR}"
    assert config.models.student == f"{models_dir}/{TINY_STUDENT_DIR}"
    for name in ("seed_path", "reference_path", "eval_path"):
        assert Path(REPO / getattr(config.data, name)).is_file(), name  # uploaded by `montessori loop start`


def test_make_k8s_images_renames_every_montessori_image_from_registry_and_tag(tmp_path):
    import subprocess

    out = tmp_path / "k8s"
    command = ["make", "-s", "k8s-images", "REGISTRY=registry.example.com/ml", "TAG=1.2.3", f"K8S_OUT={out}"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=60)
    expected = {"gpu": "1.2.3", "cpu-dev": "1.2.3-cpu"}
    for overlay, tag in expected.items():
        images = {
            container["image"]
            for obj in _kustomize(out / overlay, f"make k8s-images: {overlay}")
            if obj["kind"] in ("Deployment", "Job", "StatefulSet")
            for container in obj["spec"]["template"]["spec"]["containers"]
            if "quay.io/minio" not in container["image"]
        }
        assert images <= {
            f"registry.example.com/ml/montessori:{tag}",
            "registry.example.com/ml/montessori-teacher-vllm:1.2.3",
        }
        assert f"registry.example.com/ml/montessori:{tag}" in images, (overlay, images)
