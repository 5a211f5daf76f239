"""The run directory: ``state.json`` (``RunState``), its settings hash, the lock that keeps one
adaptation per directory, and opening a run (resume, or measure the start and begin)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..checkpoint import (
    RunStateError,
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    load_checkpoint,
    read_run_state,
    run_state_error,
)
from ..config import AdaptConfig, ConfigError, Params
from ..latency_model import LatencyModel, LatencyPoint
from ..resources import Budget
from ..schedule import budgets, unmet
from ..surgery import SurgeryError, check_surgery
from ..training import evaluate
from .context import Context, measure_point
from .plan import check_reachable
from .records import IterationPlan, IterationRecord, NetworkPoint

STATE_FILE = "state.json"


EXECUTION_SETTINGS = AdaptConfig.with_role("execution")


START_PASSES = 3  # the start network, every budget's reference, is timed alone this often (fastest kept)


class RunState(BaseModel):
    """``state.json`` of an adaptation run directory: rewritten atomically after each step.

    ``status``: running, done (every budget met), unmet (the loop could not go on; ``reason`` says
    why) or max_iterations. ``latency_points``: every network the run measured besides the start
    (picks and candidates), with the prediction made before measuring it: the latency model's
    data. ``pending``: the current iteration's plan, kept so that a resumed run trains exactly the
    proposals it had planned.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    config_hash: str
    pretrained_sha256: str
    baseline: NetworkPoint
    iterations: list[IterationRecord] = Field(default_factory=list)
    status: Literal["running", "done", "unmet", "max_iterations"] = "running"
    reason: str | None = None
    latency_points: list[LatencyPoint] = Field(default_factory=list)
    pending: IterationPlan | None = None

    @classmethod
    def load(cls, path: str | Path) -> RunState:
        """The run state in ``path`` (which must exist); a damaged or foreign file is a
        ``RunStateError`` naming it and the fix."""
        raw = read_run_state(path)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise run_state_error(path, ValueError(
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))) from None

    def latency(self, record: NetworkPoint, cfg: AdaptConfig) -> float:
        """A record's latency (``adapt.latency_source``): measured, or the LUT's."""
        return record.measured_ms if cfg.latency_source == "measured" else record.lut_ms

    def start_ms(self, cfg: AdaptConfig) -> float:
        return self.latency(self.baseline, cfg)

    def values(self, record: NetworkPoint, cfg: AdaptConfig) -> dict[str, float]:
        """A record's value of every resource: latency, MACs and parameters."""
        return {"latency": self.latency(record, cfg), "macs": float(record.macs), "params": float(record.params)}

    def budgets(self, cfg: AdaptConfig) -> list[Budget]:
        """Every budget of the run (primary first), resolved against the start network."""
        return budgets(self.values(self.baseline, cfg), cfg)

    def unmet(self, cfg: AdaptConfig) -> list[Budget]:
        """The budgets the current network does not meet yet."""
        return unmet(self.values(self.current, cfg), self.budgets(cfg))

    def latency_model(self, cfg: AdaptConfig) -> LatencyModel:
        """The run's latency model: the start network and every network measured since."""
        return LatencyModel(self.baseline.lut_ms, list(self.latency_points), anchored=cfg.latency_source == "measured")

    @property
    def current(self) -> NetworkPoint:
        return self.iterations[-1] if self.iterations else self.baseline

    def save(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / STATE_FILE, self.model_dump(mode="json"))


def adapt_config_hash(params: Params) -> str:
    """What an adaptation's result depends on (not ``adapt.fresh``, not max_iterations)."""
    adapt = params.adapt.model_dump(exclude=EXECUTION_SETTINGS)
    payload = {
        "adapt": adapt,
        "other": params.section_hash("data", "model", "platform"),
        "lut": params.lut.model_dump(include={"channel_step", "min_channel_ratio"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_HELD_LOCKS: dict[str, Any] = {}  # run directory -> the open lock file this process holds


def lock_run_dir(run_dir: Path) -> None:
    """Hold ``<run_dir>.lock`` for the rest of this process: a second adaptation of the same run
    directory (another process) is refused, naming the process that holds it. The lock is the
    kernel's (``flock``): it goes with the process, however that ends."""
    import fcntl

    key = str(run_dir.resolve())
    if key in _HELD_LOCKS:
        return
    path = run_dir.with_name(f"{run_dir.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"{run_dir} is being adapted by {holder}; two adaptations of one run directory would overwrite "
            "each other's files. Fix: wait for it to finish (or stop it), or choose another adapt.run_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _HELD_LOCKS[key] = handle


def open_run(ctx: Context) -> tuple[Path, RunState]:
    """Resume the run in ``adapt.run_dir`` if its settings match, else start one (keeping old runs)."""
    params = ctx.params
    run_dir = Path(params.adapt.run_dir)
    lock_run_dir(run_dir)
    config_hash = adapt_config_hash(params)
    pretrained_sha = file_sha256(params.pretrain.checkpoint)
    state_path = run_dir / STATE_FILE
    if state_path.is_file():
        try:
            old: RunState | None = RunState.load(state_path)
        except RunStateError:
            if not params.adapt.fresh:
                raise
            old = None  # adapt.fresh: moved aside below like any other run
        same = old is not None and old.config_hash == config_hash and old.pretrained_sha256 == pretrained_sha
        if same and not params.adapt.fresh:
            ctx.log(f"resuming {run_dir}: {len(old.iterations)} iteration(s) done")
            return run_dir, old
        if not params.adapt.fresh and params.adapt.on_changed_settings == "refuse":
            raise ConfigError(
                f"{run_dir} holds an adaptation with other settings or another pretrained network "
                f"(hash {old.config_hash}, now {config_hash}). Fix: set adapt.fresh=true to start over "
                "(the old run is kept beside it), or choose another adapt.run_dir."
            )
        kept = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(kept)
        ctx.log(f"fresh start: previous run moved to {kept}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists but has no {STATE_FILE}; move it away or pick another adapt.run_dir")
    model, _, _ = load_checkpoint(params.pretrain.checkpoint)
    surgery = check_surgery(model, ctx.input_shape, params.adapt.exclude)  # before any measurement or training
    skipped = {g: why for g, why in surgery.items() if why.startswith("skipped")}
    ctx.log(f"surgery checked on {len(surgery) - len(skipped)} groups "
            f"({sum(v == 'function' for v in surgery.values())} keep the network's function exactly)"
            + (f"; not pruned: {', '.join(f'{g} ({why})' for g, why in skipped.items())}" if skipped else ""))
    if len(skipped) == len(surgery):
        raise SurgeryError("no layer of this network can be pruned: " + "; ".join(f"{g}: {w}" for g, w in surgery.items()))
    baseline_ckpt = run_dir / "iter_000.pt"  # copied there once the run is known to be feasible
    baseline = NetworkPoint(
        iteration=0,
        checkpoint=str(baseline_ckpt),
        holdout_accuracy=evaluate(model, ctx.data.holdout, threads=params.adapt.threads,
                                  channels_last=params.adapt.channels_last),
        **measure_point(ctx, model, passes=START_PASSES),
    )
    state = RunState(config_hash=config_hash, pretrained_sha256=pretrained_sha, baseline=baseline)
    check_reachable(ctx, model, state.budgets(params.adapt), state.values(baseline, params.adapt))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(baseline_ckpt, Path(params.pretrain.checkpoint).read_bytes())
    atomic_write_json(run_dir / "surgery.json", surgery)
    baseline.checkpoint_sha256 = file_sha256(baseline_ckpt)
    state.save(run_dir)
    ctx.estimator.save()
    return run_dir, state

