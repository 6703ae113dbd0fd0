"""One run per --out at a time, nothing written by a refused run, and an exit status that tells failed candidates."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipelines.engine as engine
from data.lock import LOCK_NAME, FolderLocked, hold_folder_lock, raise_if_locked
from pipelines.run_m3fd import main

pytestmark = pytest.mark.usefixtures("no_m3fd_root")

# Another process holding a folder's lock, as a second terminal's run would: it says "held" once it holds it.
HOLDER = """
import sys, time
from data.lock import hold_folder_lock
with hold_folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """(the holding process, the folder it holds): ``tmp_path/out``."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc, out
    finally:
        proc.kill()
        proc.wait()


def kill_holder(proc: subprocess.Popen) -> None:
    """SIGKILL: no cleanup of any kind runs in the holder."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time: any write shows."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_held_folder_is_refused_at_once_naming_the_holder(holder):
    proc, out = holder
    started = time.monotonic()
    with pytest.raises(FolderLocked) as probed:
        raise_if_locked(out)
    with pytest.raises(FolderLocked) as taken:
        with hold_folder_lock(out):
            pytest.fail("took a lock another process holds")
    assert time.monotonic() - started < 5  # no waiting for the holder to finish
    for err in (probed.value, taken.value):
        assert err.holder["pid"] == proc.pid and err.holder["host"] == socket.gethostname()
        assert f"pid {proc.pid} on {socket.gethostname()}, since " in str(err) and "command: -c" in str(err)


def test_a_holder_killed_with_sigkill_leaves_a_lock_the_next_run_takes(holder):
    proc, out = holder
    kill_holder(proc)
    raise_if_locked(out)
    with hold_folder_lock(out) as path:
        assert path == out / LOCK_NAME and f'"pid": {os.getpid()}' in path.read_text()


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    out = tmp_path / "out"
    with hold_folder_lock(out):
        child = os.fork()
        if child == 0:  # outlives the parent's lock, then leaves without any cleanup
            time.sleep(60)
            os._exit(0)
    try:
        probe = subprocess.run([sys.executable, "-c", "import sys; from data.lock import raise_if_locked; "
                                "raise_if_locked(sys.argv[1])", str(out)], capture_output=True, text=True)
        assert probe.returncode == 0, probe.stderr
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


@pytest.mark.parametrize("data", ["given", "generated"])
def test_a_second_run_on_a_held_out_is_refused_with_exit_2_and_writes_nothing(holder, synthetic_root, data, capsys,
                                                                             monkeypatch):
    proc, out = holder
    before = snapshot(out)
    monkeypatch.setattr(engine, "resolve_dataset", lambda *a: pytest.fail("checked the data before the lock"))
    argv = ["--preset", "tiny", "--out", str(out), "--no-progress"]
    assert main(argv + (["--data", str(synthetic_root)] if data == "given" else [])) == 2
    err = capsys.readouterr().err
    assert "is in use by another run" in err and f"pid {proc.pid}" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_a_run_refused_for_its_candidates_creates_no_out(tmp_path, synthetic_root, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "no_such_folder"
    assert main(["--preset", "tiny", "--data", str(synthetic_root), "--out", str(out), "--no-progress",
                 "--fused", f"cdd={missing}"]) == 2
    assert "candidate 'cdd'" in capsys.readouterr().err
    assert not out.exists()  # no split.json, no swept folder, no lock file
    # The built-in scenes are written into --out: a malformed candidate is refused before they are.
    assert main(["--preset", "tiny", "--out", str(out), "--no-progress", "--fused", "a/b=dir"]) == 2
    assert not out.exists()


@pytest.mark.slow
def test_exit_status_is_1_when_a_candidate_failed_and_0_when_none_did(holder, synthetic_root, capsys, monkeypatch):
    proc, out = holder
    kill_holder(proc)  # the run below must take the lock a killed run left
    broken = out.parent / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    argv = ["--preset", "tiny", "--data", str(synthetic_root), "--out", str(out), "--no-progress",
            "--baselines", "ir", "vis", "--bootstrap", "0"]
    assert main(argv + ["--checkpoints", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 candidate(s) failed" in err and "- broken: checkpoint rejected" in err
    assert (out / "results.json").is_file() and (out / "results.md").is_file()  # the results are still written

    # The same rows without the broken one (and no DAE-Fuse trained here): the detectors are reused, nothing failed.
    tiny = engine.load_pipeline_preset("tiny")
    monkeypatch.setattr(engine, "load_pipeline_preset", lambda name: dataclasses.replace(tiny, train_dae_fuse=False))
    assert main(argv) == 0
    assert "failed" not in capsys.readouterr().err
    raise_if_locked(out)  # released at the end of the run
