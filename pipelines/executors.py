"""Where independent jobs run: in this process, in a local process pool, or on a Dask cluster.

    with EXECUTORS.get("dask")(ExecutorConfig(jobs=2)) as executor:
        for outcome in executor.run([Job(detect_job, job) for job in jobs]):
            ...  # outcome.index, outcome.result or outcome.error, in the order the jobs finish

A job is a module-level function and one plain-data argument (dicts, lists, strings, numbers), so a worker on
another machine imports the function by name and nothing larger than the argument and the returned record travels
through the scheduler: the files a job reads and writes live on a filesystem the driver and workers share.
A job that raises is delivered as an :class:`Outcome` with its error; the other jobs go on.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from data.registry import Registry

LOGGER = logging.getLogger("pipelines.executors")
LOOPBACK = "127.0.0.1"  # the local Dask cluster listens here only: nothing outside this machine can reach it


@dataclass(frozen=True)
class ExecutorConfig:
    """Which executor runs the jobs, and how; each executor reads the fields that concern it."""

    name: str = "local"                # an EXECUTORS name
    jobs: int = 1                      # jobs at once: pool processes, or worker processes of the local Dask cluster
    scheduler: str | None = None       # dask: a running scheduler to join (tcp://HOST:PORT); None: a local cluster
    gpus_per_job: float | None = None  # dask: the worker resource 'GPU' each job holds; None: none asked for
    # dask: reruns of a job that raised (a GPU out of memory, a file system hiccup: detector runs resume from their
    # last epoch). A job whose worker died is rescheduled by the scheduler itself, up to its
    # distributed.scheduler.allowed-failures (3 by default), whatever this says.
    retries: int = 2


@dataclass(frozen=True)
class Job:
    """One independent piece of work: ``fn(arg)``."""

    fn: Callable[[Any], Any]  # module-level, so another process imports it by name
    arg: Any                  # plain data: pickled to the worker


@dataclass(frozen=True)
class Outcome:
    """A finished job: its position in the submitted list and its result, or the exception it raised."""

    index: int
    result: Any = None
    error: BaseException | None = None


class Executor(Protocol):
    """A context manager that runs jobs; ``run`` yields each job's :class:`Outcome` as it finishes."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc_info) -> None: ...

    def describe(self) -> str: ...

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]: ...


EXECUTORS: Registry[Callable[[ExecutorConfig], Executor]] = Registry("executor")


def default_executor(jobs: int) -> str:
    """The executor of a run that names none: one job at a time in this process, or a local pool for more."""
    return "local" if jobs <= 1 else "pool"


class RunExecutor:
    """The one executor of a pipeline run, shared by its stages (fusing shards, detector runs, robustness cells),
    started on first use so a run whose work is all cached starts no cluster, and closed when the run ends.

    ``distributed``: the jobs may run on other machines (Dask), so splitting work into tasks pays; on one machine
    the stages keep fusing in this process, where the fuser is already loaded and the cores already busy.
    """

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self._executor: Executor | None = None

    @property
    def distributed(self) -> bool:
        return self.config.name == "dask"

    def __enter__(self) -> RunExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._executor is not None:
            self._executor.__exit__(*exc_info)
            self._executor = None

    def describe(self) -> str:
        return EXECUTORS.get(self.config.name)(self.config).describe()

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        if self.config.name == "pool" and len(jobs) == 1:  # a spawned process would cost an interpreter and torch
            yield from LocalExecutor(self.config).run(jobs)
            return
        if self._executor is None:
            self._executor = EXECUTORS.get(self.config.name)(self.config).__enter__()
        yield from self._executor.run(jobs)


@EXECUTORS.register("local")
class LocalExecutor:
    """One job at a time in this process, in the order given."""

    def __init__(self, config: ExecutorConfig):
        self.config = config

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def describe(self) -> str:
        return "in this process"

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for index, job in enumerate(jobs):
            try:
                result = job.fn(job.arg)
            except Exception as err:  # noqa: BLE001 - the caller records it; the other jobs go on
                yield Outcome(index, error=err)
            else:
                yield Outcome(index, result=result)


@EXECUTORS.register("pool")
class PoolExecutor:
    """``jobs`` spawned processes on this machine (spawn, not fork: torch and OpenMP state do not survive a fork).
    A worker that dies breaks the pool: the jobs not finished then fail, the finished ones are kept."""

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> PoolExecutor:
        self._pool = ProcessPoolExecutor(max_workers=self.config.jobs, mp_context=get_context("spawn"))
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def describe(self) -> str:
        return f"{self.config.jobs} local processes"

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        futures = {self._pool.submit(job.fn, job.arg): index for index, job in enumerate(jobs)}
        for future in as_completed(futures):
            try:
                yield Outcome(futures[future], result=future.result())
            except Exception as err:  # noqa: BLE001 - the caller records it; the other jobs go on
                yield Outcome(futures[future], error=err)


@EXECUTORS.register("dask")
class DaskExecutor:
    """Jobs as tasks of a Dask distributed cluster: the one at ``scheduler`` (however it was started: dask-jobqueue,
    dask-kubernetes, ``dask scheduler``/``dask worker``), left running afterwards, or else a ``LocalCluster`` of
    ``jobs`` single-threaded worker processes bound to 127.0.0.1, closed at the end. One task per job, never
    cached by Dask (``pure=False``: the project's own store decides what is finished), each run in a child process
    of its worker (:func:`run_in_child`)."""

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self._cluster = None
        self._client = None

    def __enter__(self) -> DaskExecutor:
        from distributed import Client, LocalCluster  # only when chosen: the other executors do without Dask

        if self.config.scheduler:
            self._client = Client(self.config.scheduler)
        else:
            # One thread per worker: one job at a time per worker process, each job taking the recipe's torch
            # threads, so --jobs workers use the cores --jobs pool processes would. No dashboard: one more port.
            resources = {"GPU": self.config.gpus_per_job} if self.config.gpus_per_job else None
            self._cluster = LocalCluster(n_workers=self.config.jobs, threads_per_worker=1, processes=True,
                                         host=LOOPBACK, dashboard_address=None, resources=resources)
            try:
                self._client = Client(self._cluster)
            except BaseException:
                self._cluster.close()
                raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._client is not None:
                self._client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()

    def describe(self) -> str:
        where = self.config.scheduler or f"a local cluster of {self.config.jobs} worker processes"
        return f"Dask ({where})"

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        from distributed import as_completed as finished

        options: dict[str, Any] = {"pure": False, "retries": self.config.retries}
        if self.config.gpus_per_job:
            options["resources"] = {"GPU": self.config.gpus_per_job}
        futures = {self._client.submit(run_in_child, job, **options): index for index, job in enumerate(jobs)}
        try:
            for future in finished(futures):
                try:
                    yield Outcome(futures[future], result=future.result())
                except Exception as err:  # noqa: BLE001 - the caller records it; the other jobs go on
                    yield Outcome(futures[future], error=err)
                finally:
                    future.release()  # the result is the caller's now: the worker may forget it
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:  # the caller stopped early: a cluster that outlives this run must not keep working for it
                self._client.cancel(pending)


def run_in_child(job: Job) -> Any:
    """``job.fn(job.arg)`` in a fresh Python process, alone in it, as a pool worker runs it; its result or its
    exception comes back. Why not in the Dask worker itself: the worker's event loop draws from Python's global
    ``random`` while a task runs (seeded, then read 6 s later in a worker: another number than in a plain process),
    and Ultralytics' augmentations draw from it too, so the same seed trained another detector; and a worker
    process outlives many jobs while Ultralytics' settings folder is fixed by the first one of a process.

    A child that dies (out of memory, killed) raises ``RuntimeError``: Dask's ``retries`` run the job again. The
    child dies with its worker (Linux: ``PR_SET_PDEATHSIG``), so a rescheduled job never races an orphan writing
    the same files.
    """
    import cloudpickle  # Dask's own pickler (a dependency of distributed): what Dask shipped here ships on

    with tempfile.TemporaryDirectory(prefix="fusebench-job-") as folder:
        job_file, result_file = Path(folder) / "job.pkl", Path(folder) / "result.pkl"
        job_file.write_bytes(cloudpickle.dumps(job))
        # The child imports what the worker imported (the job's module, this package) from where the worker did.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        done = subprocess.run([sys.executable, "-m", __name__, str(job_file), str(result_file), str(os.getpid())],
                              env=env, check=False)
        if not result_file.is_file():
            how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
                   else f"exited with status {done.returncode}")
            raise RuntimeError(f"the job's process {how} before it returned")
        failed, value = pickle.loads(result_file.read_bytes())
    if failed:
        raise value
    return value


def _child_main(job_file: str, result_file: str, parent: int) -> int:
    """The child side of :func:`run_in_child`: run the pickled job, pickle ``(failed, result or exception)``."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the worker died before the line above took effect
            return 1
    job = pickle.loads(Path(job_file).read_bytes())
    try:
        outcome = (False, job.fn(job.arg))
    except Exception as err:  # noqa: BLE001 - delivered to the caller, who records it
        traceback.print_exc()  # into the worker's log, with the frames the pickled exception loses
        try:
            pickle.dumps(err)
            outcome = (True, err)
        except Exception:  # noqa: BLE001 - an exception that does not pickle still says what happened
            outcome = (True, RuntimeError(f"{type(err).__name__}: {err}"))
    partial = Path(result_file + ".partial")
    partial.write_bytes(pickle.dumps(outcome))
    partial.replace(result_file)  # all or nothing: a child killed while writing leaves no result
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
