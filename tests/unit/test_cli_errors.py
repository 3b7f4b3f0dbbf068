"""Mistakes a user makes at the command line are one line and exit 2: a YAML syntax error as file:line:column, a
controller asked to elect a leader outside a cluster, a flag given to the wrong service."""

from __future__ import annotations

import pytest

from common.config import read_config_file
from common.errors import InvalidArgument


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: demo\nmodels:\n  teacher: a\n   student: b\n")
    with pytest.raises(InvalidArgument) as caught:
        read_config_file(path)
    assert str(caught.value).startswith(f"{path}:4:"), str(caught.value)
    assert "not valid YAML" in str(caught.value)


def test_a_toml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("name = 'demo'\niterations = = 2\n")
    with pytest.raises(InvalidArgument, match=rf"^{path}:2:\d+: not valid TOML"):
        read_config_file(path)


def test_the_cli_reports_a_yaml_error_on_one_line_with_exit_2(tmp_path, capsys):
    from cli.main import main

    path = tmp_path / "run.yaml"
    path.write_text("sizes: {probe_prompts: 3\n")
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"montessori: error: {path}:2:1: not valid YAML"), err


def test_leader_election_outside_a_cluster_is_one_line_and_exit_2(monkeypatch, capsys):
    from cli.main import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    assert main(["serve", "controller", "--insecure", "--port", "0", "--leader-election"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("montessori: error: --leader-election: needs a Kubernetes cluster"), err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["serve", "influence", "--preload", "x"],
            "--preload: is a flag of serve teacher only, not of serve influence",
        ),
        (["serve", "teacher", "--token-file", "f"], "--token-file: is a flag of serve controller only"),
        (["serve", "trainer", "--token-review"], "--token-review: is a flag of serve controller only"),
        (["serve", "influence", "--access-file=a.yaml"], "--access-file: is a flag of serve controller only"),
        (["serve", "preference", "--device", "cpu"], "--device: is a flag of serve teacher, influence, trainer only"),
        (["serve", "controller", "--allowed-clients", "x"], "--allowed-clients: is a flag of serve teacher, "),
        (["serve", "controller", "--processes", "2"], "--processes: is a flag of serve trainer only"),
        # Not taken for an abbreviation of the teacher's own --teacher-config.
        (["serve", "teacher", "--teacher", "127.0.0.1:1"], "--teacher: is a flag of serve controller only"),
    ],
)
def test_a_flag_of_another_service_is_one_line_naming_it_and_exit_2(capsys, argv, message):
    """Each service's flags live with its start-up (services/<name>/main.py): given to another service, a flag is
    refused before anything starts (no --tls-dir/--insecure needed to learn it), on one line that names it."""
    from cli.main import main

    assert main([*argv, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"montessori: error: {message}"), err


def test_an_unknown_serve_flag_is_argparses_error_naming_it_with_exit_2(capsys):
    from cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "teacher", "--insecure", "--no-such-flag"])
    assert exited.value.code == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1] == "montessori: error: unrecognized arguments: --no-such-flag"
    )
