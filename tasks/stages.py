"""Tasks for the stages around the adaptation: each wraps one ``netadapt_core.stages`` function
(``export``: ``netadapt_core.stages.run_export``).

Their outputs are files named in ``params.yaml``; they return small JSON-able records. Caching of
these is by content inside the stage (pretrain skips a matching checkpoint, the LUT build reuses
measured entries), so the tasks themselves are not cached.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from netadapt_core import stages
from netadapt_core.config import Params


@task(name="data", cache_policy=NO_CACHE)
def data(params: Params) -> dict[str, Any]:
    return stages.run_data(params)


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain(params: Params) -> dict[str, Any]:
    return stages.run_pretrain(params)


@task(name="build-lut", cache_policy=NO_CACHE)
def build_lut(params: Params) -> dict[str, Any]:
    return stages.run_lut(params)


@task(name="check-lut", cache_policy=NO_CACHE)
def check_lut(params: Params) -> dict[str, Any]:
    return stages.run_lut_check(params)


@task(name="finetune", cache_policy=NO_CACHE)
def finetune(params: Params) -> list[dict[str, Any]]:
    return stages.run_finetune(params)


@task(name="export", cache_policy=NO_CACHE)
def export(params: Params, check: bool = False) -> dict[str, Any]:
    return stages.run_export(params, check=check)


@task(name="report", cache_policy=NO_CACHE)
def report(params: Params) -> dict[str, Any]:
    return stages.run_report(params)
