"""The worker pool for proposals, chosen in ``params.yaml`` (``adapt.runner``, ``adapt.workers``)."""

from __future__ import annotations

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from netadapt_core.config import AdaptConfig


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
