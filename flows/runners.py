"""The worker pool for proposals, chosen in ``params.yaml`` (``adapt.runner``, ``adapt.workers``)."""

from __future__ import annotations

import importlib.util
import socket
from urllib.parse import urlsplit

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from netadapt_core.config import AdaptConfig
from netadapt_core.errors import NetAdaptError

DASK_PORT = 8786  # a Dask scheduler's default port
CONNECT_TIMEOUT_S = 3.0


class RunnerError(NetAdaptError, ConnectionError):
    """The configured worker pool cannot be used (a Dask scheduler that does not answer, a missing package)."""


def check_runner(cfg: AdaptConfig) -> None:
    """Refuse, before any work, a worker pool that cannot start: runner dask without prefect-dask, or an
    ``adapt.dask_address`` where no scheduler answers (a TCP connection is tried, ``CONNECT_TIMEOUT_S``)."""
    if cfg.runner != "dask":
        return
    if importlib.util.find_spec("prefect_dask") is None:
        raise RunnerError("adapt.runner=dask needs the prefect-dask package. Fix: `pip install prefect-dask`, "
                          "or set adapt.runner=threads or processes")
    if not cfg.dask_address:
        return
    address = cfg.dask_address if "://" in cfg.dask_address else f"tcp://{cfg.dask_address}"
    parts = urlsplit(address)
    if parts.scheme not in ("tcp", "tls"):
        return  # other transports (inproc, ucx): Dask itself reports on them
    try:
        host, port = parts.hostname, parts.port or DASK_PORT
    except ValueError as exc:  # a port that is not a number
        raise RunnerError(f"adapt.dask_address={cfg.dask_address!r} is not an address ({exc}). Fix: give it as "
                          "tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786") from None
    if not host:
        raise RunnerError(f"adapt.dask_address={cfg.dask_address!r} names no host. Fix: give it as tcp://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RunnerError(
            f"adapt.dask_address={cfg.dask_address!r}: no Dask scheduler answers at {host}:{port} ({exc}). Fix: "
            "start it (`dask scheduler`), correct the address, or unset adapt.dask_address for a local cluster"
        ) from None


def make_task_runner(cfg: AdaptConfig) -> TaskRunner:
    """threads (default), processes, or Dask: a local cluster of ``workers`` single-threaded
    processes, or the scheduler at ``adapt.dask_address`` for users who outgrow one machine."""
    if cfg.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.runner == "processes":
        return ProcessPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None}
    )
