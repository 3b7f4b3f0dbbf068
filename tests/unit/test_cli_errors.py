"""Mistakes a user makes at the command line are one line and exit 2: a YAML syntax error as file:line:column, a
controller asked to elect a leader outside a cluster."""

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
