"""The set-up promises: pyproject and environment.yml agree, README opens with the two commands, CI runs them,
and the network guard that every other test relies on really blocks."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import tomllib

import pytest
import yaml

from tests.conftest import NETGUARD_DIR, REPO_ROOT


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


def test_requires_python_is_what_the_suite_needs():
    """The suite (this file's tomllib, and so CI's ``make test``) needs Python 3.11; pyproject must not promise
    less, and environment.yml (checked above) pins the same."""
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires.strip())
    assert match, f"requires-python {requires!r}: expected '>=3.N'"
    assert (int(match[1]), int(match[2])) == (3, 11), f"requires-python {requires!r}, the suite needs >=3.11"
    assert sys.version_info >= (3, 11)


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


@pytest.mark.parametrize("lookup, argument", [
    (socket.gethostbyname, "example.com"),
    (socket.gethostbyname_ex, "example.com"),
    (socket.gethostbyaddr, "192.0.2.1"),
    (lambda address: socket.getnameinfo(address, 0), ("192.0.2.1", 80)),
    (lambda host: socket.getaddrinfo(host, 443), "example.com"),
])
def test_network_guard_blocks_name_lookups(tmp_path, monkeypatch, lookup, argument):
    monkeypatch.setenv("NETGUARD_LOG", str(tmp_path / "own.log"))
    with pytest.raises(OSError, match="network access blocked"):
        lookup(argument)
    assert (tmp_path / "own.log").read_text().count("blocked") == 1


def test_network_guard_lets_loopback_names_resolve():
    assert socket.gethostbyname("localhost").startswith("127.")
    assert socket.getaddrinfo("127.0.0.1", 80)


def _fake_sitecustomize(folder):
    """A folder holding a 'system' sitecustomize that marks that it ran and installs nothing."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import os\nos.environ['FAKE_SITECUSTOMIZE_RAN'] = '1'\n")
    return folder


def test_network_guard_is_on_even_when_a_system_sitecustomize_was_imported_first(tmp_path):
    """A Python whose own sitecustomize ran at start-up (Debian's does): ``import sitecustomize`` in the test set-up
    would return that one and leave the guard off; conftest loads the guard by path, so it is on."""
    fake = _fake_sitecustomize(tmp_path / "system")
    code = textwrap.dedent("""
        import os, sys
        assert os.environ.get('FAKE_SITECUSTOMIZE_RAN') == '1' and 'sitecustomize' in sys.modules
        import tests.conftest as conftest
        conftest.assert_netguard_on()
        print('guard on')
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO_ROOT)])}
    env.pop("NETGUARD_LOG", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO_ROOT,
                          check=False)
    assert proc.returncode == 0 and "guard on" in proc.stdout, proc.stderr[-2000:]


def test_subprocesses_get_the_guard_and_still_run_the_sitecustomize_it_shadows(tmp_path):
    fake = _fake_sitecustomize(tmp_path / "system")
    # sys.audit raises the event gethostbyname raises before it resolves: nothing is looked up if the guard is off
    code = ("import os, sys\n"
            "print(getattr(sys, '_netguard_installed', False), os.environ.get('FAKE_SITECUSTOMIZE_RAN'))\n"
            "try:\n sys.audit('socket.gethostbyname', 'example.com')\n"
            "except OSError as e:\n print(e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(NETGUARD_DIR), str(fake)]),
           "NETGUARD_LOG": str(tmp_path / "child.log")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "True 1" and "network access blocked" in out
