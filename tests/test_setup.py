"""The set-up promises: pyproject and environment.yml agree, README opens with the two commands, CI runs them,
and the network guard that every other test relies on really blocks."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.conftest import REPO_ROOT


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower().replace("_", "-")


def test_pyproject_and_environment_yml_agree():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_names = [d for d in env["dependencies"] if isinstance(d, str)]
    assert {_normalise(r) for r in pip_section} == declared
    assert "python=3.11" in conda_names and "pip" in conda_names


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make run", "make test"]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M), ".ci/run must call the README's test command"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "pipelines/run_m3fd.py" in makefile and "pytest" in makefile


def test_network_guard_blocks_outside_and_allows_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("NETGUARD_LOG", str(tmp_path / "own.log"))  # keep the session's log clean
    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1, never routable anyway
    with pytest.raises(OSError, match="network access blocked"):
        socket.getaddrinfo("example.com", 443)
    assert "192.0.2.1" in (tmp_path / "own.log").read_text()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()


def test_network_guard_reaches_subprocesses(tmp_path):
    env = {**os.environ, "NETGUARD_LOG": str(tmp_path / "child.log")}
    code = "import socket\ntry:\n socket.create_connection(('192.0.2.1', 80), timeout=1)\nexcept OSError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "network access blocked" in out
