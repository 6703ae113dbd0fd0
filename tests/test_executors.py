"""Executors (pipelines/executors.py): the detector runs on a real multi-process Dask cluster give the same records
as in this process; a worker killed mid-job is replaced and its job rerun; a scheduler started separately is joined
and left running. Every cluster here listens on 127.0.0.1 only: the session's network guard fails any other
address, and each test checks the guard's log itself so a leak is blamed on the test that made it."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from pipelines import engine
from pipelines.executors import EXECUTORS, ExecutorConfig, Job, default_executor
from pipelines.config import check_executor
from pipelines.engine import PipelineConfig, run_pipeline
from pipelines.run_m3fd import parse_args
from tests.conftest import every_batch_a_step
from tests.test_determinism import SCORES, _epochs

pytestmark = pytest.mark.usefixtures("no_m3fd_root")


@pytest.fixture(autouse=True)
def loopback_only():
    """Fail the test that made a blocked (non-loopback) network attempt, not just the session at its end."""
    log = Path(os.environ["NETGUARD_LOG"])
    before = log.read_text()
    yield
    assert log.read_text() == before, f"a cluster tried to leave 127.0.0.1:\n{log.read_text()[len(before):]}"


# Jobs for the executors: module-level, so worker processes import them by name (tests/ is on their PYTHONPATH).
def square_or_fail(arg: dict) -> dict:
    if arg["value"] < 0:
        raise ValueError(f"negative: {arg['value']}")
    return {"value": arg["value"] ** 2, "pid": os.getpid()}


def die_once(arg: dict) -> dict:
    """The first time it runs, SIGKILL (no clean-up: an out-of-memory kill, a lost node) the Dask worker process
    (``arg["kill"] == "worker"``: the job runs in a child of it, ``executors.run_in_child``) or the job's own
    process (``"job"``); the marker file remembers the victim."""
    marker = Path(arg["marker"])
    if arg["kill"] and not marker.exists():
        victim = os.getppid() if arg["kill"] == "worker" else os.getpid()
        marker.write_text(f"{victim} {os.getpid()}")
        os.kill(victim, signal.SIGKILL)
        signal.pause()  # the worker's death takes this process with it
    return {"value": arg["value"], "pid": os.getpid(), "worker": os.getppid()}


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # dead, waiting to be reaped by whoever adopted it


def worker_pid(_: object) -> int:
    return os.getppid()  # the job runs in a child of its Dask worker (executors.run_in_child)


def test_options_choose_and_check_the_executor():
    cfg = parse_args(["--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786", "--gpus-per-job", "1"])
    assert (cfg.executor, cfg.scheduler, cfg.gpus_per_job) == ("dask", "tcp://127.0.0.1:8786", 1.0)
    assert check_executor(cfg, jobs=2) == []
    assert default_executor(1) == "local" and default_executor(2) == "pool"
    assert EXECUTORS.names() == ["local", "pool", "dask"]
    problems = check_executor(PipelineConfig(scheduler="tcp://127.0.0.1:8786", gpus_per_job=0), jobs=2)
    assert problems == ["--scheduler needs --executor dask", "--gpus-per-job needs --executor dask",
                        "--gpus-per-job must be positive, got 0"]


@pytest.mark.parametrize("name", ["local", "dask"])
def test_a_failing_job_is_delivered_as_its_error_and_the_others_finish(name):
    args = [{"value": v} for v in (1, -2, 3)]
    with EXECUTORS.get(name)(ExecutorConfig(name=name, jobs=2)) as executor:
        outcomes = {o.index: o for o in executor.run([Job(square_or_fail, a) for a in args])}
    assert sorted(outcomes) == [0, 1, 2]
    assert [outcomes[i].result["value"] for i in (0, 2)] == [1, 9]
    assert isinstance(outcomes[1].error, ValueError) and "negative: -2" in str(outcomes[1].error)
    assert outcomes[1].result is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, and the job dying with its worker")
def test_a_job_whose_worker_or_own_process_is_killed_is_rerun_and_every_job_finishes(tmp_path):
    """Job 1 kills its Dask worker mid-job: the scheduler reschedules it on another worker (the nanny restarts the
    dead one), and its first process died with the worker, so no orphan goes on writing. Job 2 kills its own
    process: Dask's retries run it again. The other jobs are untouched."""
    kills = {1: "worker", 2: "job"}
    args = [{"value": v, "kill": kills.get(v), "marker": str(tmp_path / f"killed{v}")} for v in range(4)]
    with EXECUTORS.get("dask")(ExecutorConfig(name="dask", jobs=2)) as executor:
        outcomes = {o.index: o for o in executor.run([Job(die_once, a) for a in args])}
    assert {i: (o.error, o.result["value"]) for i, o in outcomes.items()} == {i: (None, i) for i in range(4)}
    worker, first_run = map(int, (tmp_path / "killed1").read_text().split())
    assert outcomes[1].result["worker"] != worker and outcomes[1].result["pid"] != first_run
    assert _gone(worker) and _gone(first_run)
    job, _ = map(int, (tmp_path / "killed2").read_text().split())
    assert outcomes[2].result["pid"] != job and _gone(job)
    assert not (tmp_path / "killed0").exists() and not (tmp_path / "killed3").exists()


def test_joins_a_scheduler_started_separately_and_leaves_it_running():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", scheduler_port=0,
                      dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        with Client(address) as client:
            worker_pids = set(client.run(os.getpid).values())
        config = ExecutorConfig(name="dask", jobs=5, scheduler=address)  # jobs: the local cluster's size, unused
        with EXECUTORS.get("dask")(config) as executor:
            outcomes = list(executor.run([Job(worker_pid, None), Job(square_or_fail, {"value": 3})]))
        assert sorted((o.index, o.result if o.index == 0 else o.result["value"]) for o in outcomes) == [
            (0, *worker_pids), (1, 9)]  # ran on that cluster's one worker
        with Client(address) as client:  # still up, with its worker, after the executor closed
            assert set(client.run(os.getpid).values()) == worker_pids
            assert client.submit(square_or_fail, {"value": 4}, pure=False).result()["value"] == 16


@pytest.fixture(scope="module")
def local_and_dask_runs(tmp_path_factory, learnable_root):
    """The tiny pipeline (candidates ir and vis) with --executor dask on a local cluster of 2 single-threaded
    worker processes, then with --executor local, on the learnable set (every batch an optimiser step, so the
    weights really move and the detectors predict boxes)."""
    base = tmp_path_factory.mktemp("executors")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "detection_settings", every_batch_a_step(engine.detection_settings))
        mp.setenv("OMP_WAIT_POLICY", "PASSIVE")  # read by the workers' torch
        for executor in ("dask", "local"):
            cfg = PipelineConfig(out=base / executor, data=learnable_root, preset="tiny", baselines=[], jobs=2,
                                 executor=executor, train_dae_fuse=False, progress=False, bootstrap_resamples=0)
            results[executor] = (cfg, run_pipeline(cfg))
    return results


@pytest.mark.slow
def test_dask_cluster_gives_the_same_detector_records_as_a_local_run(local_and_dask_runs):
    """Per candidate and seed: every score of both protocols, the per-scenario numbers, every epoch's losses and
    both saved prediction files are identical whether the detector trained in a Dask worker process or here."""
    (dask_cfg, on_dask), (_, here) = local_and_dask_runs["dask"], local_and_dask_runs["local"]
    assert on_dask["config"]["executor"] == "dask" and here["config"]["executor"] == "local"
    by_name = {key: {r["name"]: r for r in res["candidates"]} for key, res in (("dask", on_dask), ("local", here))}
    assert sorted(by_name["dask"]) == sorted(by_name["local"]) == ["ir", "vis"]
    compared_boxes = 0
    for name, remote in by_name["dask"].items():
        local = by_name["local"][name]
        assert remote["error"] is None and local["error"] is None
        assert remote["detection"] == local["detection"], name
        assert [run["seed"] for run in remote["detection_runs"]] == [run["seed"] for run in local["detection_runs"]]
        for run_r, run_l in zip(remote["detection_runs"], local["detection_runs"]):
            for key in SCORES + ("scenarios",):
                assert run_r[key] == run_l[key], (name, key)
            assert Path(run_r["run_dir"]).is_relative_to(dask_cfg.out)  # the worker wrote where the driver said
            assert _epochs(Path(run_r["run_dir"])) == _epochs(Path(run_l["run_dir"]))
            for path in ("predictions_path", "deployed_predictions_path"):
                p_r, p_l = Path(run_r[path]), Path(run_l[path])
                assert p_r.is_file() == p_l.is_file(), (name, path)
                if p_r.is_file():
                    saved = json.loads(p_r.read_text())
                    assert saved == json.loads(p_l.read_text()), (name, path)
                    compared_boxes += len(saved)
        # Fused on the cluster in shards (one task per shard, moved into place here): the same images, byte for byte.
        fused_r, fused_l = Path(remote["fused_dir"]), Path(local["fused_dir"])
        assert fused_r.is_relative_to(dask_cfg.out) and fused_r.name == fused_l.name
        images = sorted(p.name for p in fused_l.glob("*.png"))
        assert images and sorted(p.name for p in fused_r.glob("*.png")) == images
        assert all((fused_r / n).read_bytes() == (fused_l / n).read_bytes() for n in images)
        assert not list(fused_r.glob("shard-*"))  # every shard folder emptied and removed
        # Scored on the workers while fused (each shard its images and whole runs), the rest read back here.
        assert (remote["fusion"], remote["temporal"]) == (local["fusion"], local["temporal"]), name
        # Stored as it arrived, so a rerun resumes from it like a local run's.
        assert (dask_cfg.out / "state" / name / "detect_seed0.json").is_file()
    assert compared_boxes > 0  # predictions were compared, not two absent files


@pytest.mark.slow
def test_a_run_whose_cluster_died_resumes_from_the_store(tmp_path, synthetic_root, monkeypatch):
    """The cluster is lost after the first detector result arrived (the scheduler's connection drops): the run
    fails, nothing half-written is taken for finished, and the rerun trains only the detector that had not
    finished, on a new cluster, like a local run resuming."""
    from pipelines import executors
    from pipelines.stages import detect as detect_stage

    cfg = PipelineConfig(out=tmp_path / "out", data=synthetic_root, preset="tiny", baselines=[], jobs=2,
                         executor="dask", train_dae_fuse=False, progress=False, bootstrap_resamples=0)
    real_run = executors.RunExecutor.run

    def dies_after_one_detector(self, jobs):
        for outcome in real_run(self, jobs):
            yield outcome
            if jobs and jobs[0].fn is detect_stage.detect_job:
                raise OSError("Timed out trying to connect to tcp://127.0.0.1: the scheduler is gone")

    monkeypatch.setattr(executors.RunExecutor, "run", dies_after_one_detector)
    with pytest.raises(OSError, match="scheduler is gone"):
        run_pipeline(cfg)
    finished = sorted(p.parent.name for p in (cfg.out / "state").glob("*/detect_seed0.json"))
    assert len(finished) == 1 and not (cfg.out / "results.json").exists()

    monkeypatch.setattr(executors.RunExecutor, "run", real_run)
    trained: list[str] = []
    real_job = detect_stage.detect_job

    def counting(job):
        trained.append(job["candidate"])
        return real_job(job)

    monkeypatch.setattr(detect_stage, "detect_job", counting)
    cfg_local = PipelineConfig(**{**cfg.__dict__, "executor": "local", "jobs": 1})  # counted here: in this process
    results = run_pipeline(cfg_local)
    assert trained == [n for n in ("ir", "vis") if n not in finished]
    assert all(r["error"] is None and r["detection"] for r in results["candidates"])
