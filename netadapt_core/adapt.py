"""The steps of NetAdapt's Algorithm 1, as functions over checkpoint paths and small records.

``loop.NetAdapt`` composes them into the loop; this module holds what one step needs: the run's
context (settings, data, LUT estimator), planning one proposal per group, running a proposal
(prune, short-term fine-tune, holdout score), measuring a network, and the run state on disk.

``resource`` is ``adapt.resource``: latency (default), MACs or parameters. A network's latency is
its direct measurement (interleaved with the start network, so machine drift cancels); a
candidate's is predicted from its parent's measurement and the LUT's difference between the two
(``latency_model``). MACs and parameters are counted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import faults
from .checkpoint import (
    Architecture,
    RunStateError,
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    load_checkpoint,
    read_run_state,
    run_state_error,
    save_checkpoint,
)
from .config import AdaptConfig, ConfigError, Params
from .data import DataBundle, describe_data, load_data
from .errors import NetAdaptError
from .latency_model import LatencyModel, LatencyPoint
from .lut import LatencyEstimator, LatencyLUT, WidthTemplate, channel_grid, network_fingerprint
from .models.sources import factory_defaults, split_name
from .platforms import make_platform
from .resources import Budget, count_macs_params, format_value
from .schedule import budgets, unmet
from .surgery import SurgeryError, check_surgery, prunable_groups, prune_group
from .training import evaluate, train

STATE_FILE = "state.json"
# the adapt settings a proposal's training reads (its cache key), and those a run's result does not
# depend on (runners, paths): declared beside each setting (AdaptConfig.ROLES)
PROPOSAL_SETTINGS = AdaptConfig.with_role("proposal")
EXECUTION_SETTINGS = AdaptConfig.with_role("execution")
START_PASSES = 3  # the start network, every budget's reference, is timed alone this often (fastest kept)


class BudgetUnreachableError(NetAdaptError, RuntimeError):
    """No network the LUT grid allows can meet the budget."""


@dataclass(frozen=True)
class ProposalPlan:
    """What one proposal will do: remove ``n_remove`` filters of group ``group``, the fewest that
    meet the iteration's target on ``resource``; its estimated latency (LUT), MACs and parameters."""

    iteration: int
    group: str
    channels_before: int
    channels_after: int
    estimated_ms: float
    seed: int
    resource: str = "latency"
    estimated_macs: int = 0
    estimated_params: int = 0
    verified_ms: float | None = None  # measured before training (adapt.verify), interleaved with the parent

    @property
    def latency_ms(self) -> float:
        """The best knowledge of the candidate's latency: measured if it was, else predicted."""
        return self.estimated_ms if self.verified_ms is None else self.verified_ms

    @property
    def n_remove(self) -> int:
        return self.channels_before - self.channels_after

    def estimates(self) -> dict[str, float]:
        return {"latency": self.latency_ms, "macs": self.estimated_macs, "params": self.estimated_params}


@dataclass(frozen=True)
class ProposalResult:
    plan: ProposalPlan
    checkpoint: str
    holdout_accuracy: float
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.plan), "checkpoint": self.checkpoint,
                "holdout_accuracy": self.holdout_accuracy, "train_seconds": self.train_seconds}


@dataclass
class Context:
    """What every step needs: settings, data, platform, LUT-backed estimator."""

    params: Params
    data: DataBundle
    estimator: LatencyEstimator
    log: Callable[[str], None] = print

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    @property
    def platform(self):
        return self.estimator.platform


def open_estimator(params: Params, arch: Architecture, input_shape: tuple[int, ...]) -> LatencyEstimator:
    """Load the LUT, check it was measured on this platform for this network, and attach the
    overlay of entries measured on demand (``lut.on_demand_path``)."""
    platform = make_platform(params.platform)
    lut = LatencyLUT.load(params.lut.path)
    lut.check_compatible(platform.metadata(), network_fingerprint(arch, input_shape), params.lut.path)
    estimator = LatencyEstimator(lut, platform, input_shape, params.lut.measure_missing)
    estimator.attach(params.lut.on_demand_path)
    return estimator


def architecture(params: Params) -> tuple[Architecture, tuple[int, int, int]]:
    """The starting network's architecture and input shape (C, H, W), from the settings alone."""
    in_channels, size, num_classes = describe_data(params.data)
    m = params.model
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels}
    if split_name(m.name)[0] == "builtin":
        kwargs.update(factory_defaults(m.name))  # the record names every argument
    else:
        kwargs["image_size"] = size
    kwargs.update(m.kwargs)
    return Architecture(m.name, kwargs), (in_channels, size, size)


def check_pretrained(params: Params, arch: Architecture, meta: dict[str, Any]) -> None:
    """Refuse a pretrained checkpoint made for other settings (model, its arguments, the data's
    classes, channels or size): adapting it would silently adapt another network."""
    expected, shape = architecture(params)
    differ = {k for k in set(arch.kwargs) | set(expected.kwargs) if arch.kwargs.get(k) != expected.kwargs.get(k)}
    problems = ([f"model {arch.name!r} vs {expected.name!r}"] if arch.name != expected.name else []) + [
        f"{k} {arch.kwargs.get(k)!r} vs {expected.kwargs.get(k)!r}" for k in sorted(differ)]
    if list(meta.get("input_shape", shape)) != list(shape):
        problems.append(f"input shape {meta['input_shape']} vs {list(shape)}")
    if problems:
        raise ConfigError(
            f"{params.pretrain.checkpoint} was made for other settings than these ({'; '.join(problems)}; "
            "checkpoint vs settings). Fix: run `netadapt pretrain` (or `dvc repro`) to make it for these "
            "settings, or restore the settings it was made with"
        )


def make_context(params: Params, log: Callable[[str], None] = print) -> Context:
    data = load_data(params.data)
    _, arch, meta = load_checkpoint(params.pretrain.checkpoint)
    check_pretrained(params, arch, meta)
    return Context(params, data, open_estimator(params, arch, data.input_shape), log)


class GroupEstimates:
    """Resource use of ``parent`` with one group cut to a given width, each variant built once:
    latency predicted by ``latency_model`` from the parent's latency (``anchor_ms``) and the LUT's
    difference, MACs and parameters counted."""

    def __init__(self, ctx: Context, parent: nn.Module, group: str, channels: int, anchor_ms: float,
                 resource: str, latency_model: LatencyModel | None = None,
                 parent_signatures: list[str] | None = None) -> None:
        self.ctx, self.parent, self.group, self.channels = ctx, parent, group, channels
        self.anchor_ms, self.resource = anchor_ms, resource
        self.latency_model = latency_model
        self.parent_signatures = parent_signatures or [u.signature for u in ctx.estimator.uses(parent)]
        self.parent_sum = ctx.estimator.layer_sum_ms(parent)
        self.cache: dict[tuple[int, str], float] = {}
        self.variants: dict[int, nn.Module] = {}
        self.template: WidthTemplate | None = None  # None: not made yet (probed False) or cannot be made
        self.probed = False
        self.misread = False  # set when the template disagreed with a built network (and was dropped)

    def variant(self, channels: int) -> nn.Module:
        if channels not in self.variants:
            self.variants[channels] = copy.deepcopy(self.parent)
            prune_group(self.variants[channels], self.group, self.channels - channels, self.ctx.input_shape)
        return self.variants[channels]

    def _template(self, channels: int) -> WidthTemplate | None:
        """The group's ``WidthTemplate``, made from the first variant built (``channels``: the
        narrowest width, the first a search asks for, so feasibility is always read off a built
        network)."""
        if not self.probed:
            self.probed = True
            probe = [u.signature for u in self.ctx.estimator.uses(self.variant(channels))]
            self.template = WidthTemplate.make(self.parent_signatures, probe, self.channels, channels)
        return self.template

    def layer_sum_ms(self, channels: int) -> float:
        """The variant's LUT layer sum; by the template while the table has its entries (a search
        over the grid builds a few networks per group, not one per width it tries)."""
        template = self._template(channels)
        if template is not None and channels not in self.variants:
            found = self.ctx.estimator.signature_sum_ms(template.signatures(channels))
            if found is not None:
                return found
        return self.ctx.estimator.layer_sum_ms(self.variant(channels))

    def __call__(self, channels: int, what: str | None = None) -> float:
        what = what or self.resource
        if (channels, what) not in self.cache:
            if what == "latency":
                child_sum = self.layer_sum_ms(channels)
                if self.latency_model is None:
                    self.cache[channels, what] = self.anchor_ms + child_sum - self.parent_sum
                else:
                    self.cache[channels, what] = self.latency_model.predict(self.anchor_ms, self.parent_sum,
                                                                            child_sum)
            else:
                variant = self.variant(channels)
                self.cache.update({(channels, k): v for k, v in count_macs_params(variant, self.ctx.input_shape).items()})
        return self.cache[channels, what]

    def plan(self, iteration: int, channels: int, seed: int) -> ProposalPlan:
        macs, params = int(self(channels, "macs")), int(self(channels, "params"))  # builds the variant
        if self.template is not None:
            built = self.ctx.estimator.layer_sum_ms(self.variants[channels])
            by_template = self.ctx.estimator.signature_sum_ms(self.template.signatures(channels))
            # the built network's entries are all in the table now: a template signature missing
            # from it is a misread as much as a different sum
            if by_template is None or abs(built - by_template) > 1e-9 * max(1.0, built):
                # the template misread this network: from now on build every width of this group
                self.ctx.log(f"{self.group}: width template off ({by_template:.4f} vs {built:.4f} ms); "
                             "building every variant of this group")
                self.template, self.misread = None, True
                self.cache = {k: v for k, v in self.cache.items() if k[1] != "latency"}
        return ProposalPlan(iteration, self.group, self.channels, channels, self(channels, "latency"), seed,
                            self.resource, macs, params)


def group_options(ctx: Context, group) -> list[int]:
    """The grid widths below a group's current width, largest first (empty: at its minimum)."""
    g = ctx.estimator.lut.grid.get(group.id)
    if g is None:
        raise ConfigError(f"group {group.id} is not in the LUT grid; rebuild the LUT for this network")
    return [c for c in channel_grid(g["original"], g["step"], g["min"]) if c < group.channels]


def _fewest_meeting(estimate: GroupEstimates, options: list[int], target: float | None) -> int | None:
    """The widest grid width (fewest filters removed) whose estimate meets ``target``: a bisection,
    as a group's resource use falls as it loses filters. None: not even the narrowest does;
    ``target=None``: one grid step."""
    if target is None:
        return options[0]
    if estimate(options[-1]) > target:
        return None
    lo, hi = 0, len(options) - 1  # options[hi] meets the target; find the first that does
    while lo < hi:
        mid = (lo + hi) // 2
        if estimate(options[mid]) <= target:
            hi = mid
        else:
            lo = mid + 1
    return options[hi]


def plan_proposals(ctx: Context, parent: nn.Module, iteration: int, current: dict[str, float], target: float | None,
                   resource: str = "latency", guards: list[Budget] = (),
                   latency_model: LatencyModel | None = None,
                   estimates: dict[str, GroupEstimates] | None = None) -> list[ProposalPlan]:
    """One plan per group that can meet ``target`` on ``resource``: the fewest filters (grid
    multiples) that do. ``current`` holds the parent's value of every resource (its latency is the
    anchor of the latency predictions). ``target=None`` plans one grid step per group instead.
    ``estimates`` (group id -> ``GroupEstimates``) keeps the variants built, for another target
    on the same parent.

    A group's resource use falls as it loses filters, so the search is a bisection over its grid.
    Groups already at their minimum, or unable to reach the target even there, make no proposal;
    nor does one that would break a budget in ``guards`` (budgets the parent meets).
    """
    plans = []
    estimates = {} if estimates is None else estimates
    parent_signatures: list[str] | None = None
    for index, group in enumerate(prunable_groups(parent, ctx.input_shape, ctx.params.adapt.exclude)):
        options = group_options(ctx, group)
        if not options:
            continue
        if group.id not in estimates:
            if parent_signatures is None:
                parent_signatures = [u.signature for u in ctx.estimator.uses(parent)]
            estimates[group.id] = GroupEstimates(ctx, parent, group.id, group.channels, current["latency"], resource,
                                                 latency_model, parent_signatures)
        estimate = estimates[group.id]
        seed = ctx.params.adapt.seed + 1000 * iteration + index
        channels = _fewest_meeting(estimate, options, target)
        if channels is None:
            continue
        plan = estimate.plan(iteration, channels, seed)
        if estimate.misread:  # the template was dropped while planning: search again on built networks
            estimate.misread = False
            channels = _fewest_meeting(estimate, options, target)
            if channels is None:
                continue
            plan = estimate.plan(iteration, channels, seed)
        broken = [b for b in guards if not b.met(plan.estimates()[b.resource])]
        if broken:
            ctx.log(f"iteration {iteration + 1}: {group.id} -> {channels} rejected: it would break "
                    + ", ".join(b.describe() for b in broken))
            continue
        plans.append(plan)
    ctx.estimator.save()
    return plans


def proposal_key(params: Params, parent_sha256: str, plan: ProposalPlan) -> str:
    """Content key of a proposal: parent weights, the plan, and the settings its training reads."""
    payload = {
        "parent": parent_sha256,
        # what the training reads of the plan; not its latency estimate, which may be re-measured
        "plan": {k: getattr(plan, k) for k in ("iteration", "group", "channels_before", "channels_after", "seed")},
        "data": params.section_hash("data"),
        "adapt": params.adapt.model_dump(mode="json", include=PROPOSAL_SETTINGS),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def finished_proposal(out_path: str | Path, key: str) -> ProposalResult | None:
    """The result of a proposal already run with this key (its record and checkpoint intact)."""
    record_path = Path(out_path).with_suffix(".json")
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        if record["key"] != key or file_sha256(record["checkpoint"]) != record["checkpoint_sha256"]:
            return None
        return ProposalResult(plan_from_dict(record["plan"]), record["checkpoint"],
                              record["holdout_accuracy"], record["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_from_dict(record: dict[str, Any]) -> ProposalPlan:
    """A plan from a record that may hold more keys (a result) or, from older runs, fewer."""
    return ProposalPlan(**{k: record[k] for k in ProposalPlan.__dataclass_fields__ if k in record})


def run_proposal(params: Params, data: DataBundle, parent_checkpoint: str, plan: ProposalPlan,
                 out_path: str, key: str, journal: str | Path | None = None, steps: int | None = None,
                 resume_from: str | None = None, screening_round: int = 0) -> ProposalResult:
    """Prune the plan's filters from the parent, fine-tune short-term, score on the holdout set.

    ``steps`` (default ``adapt.short_term_steps``) SGD steps are trained; with ``resume_from`` (the
    proposal's checkpoint from an earlier screening round) training goes on from there instead of
    pruning the parent again (fresh momentum; round ``screening_round`` draws other batches).

    Idempotent: a proposal whose record (``out_path`` with ``.json``) carries the same ``key`` is
    returned as it was, not run again. Each real execution appends a line to ``journal`` (JSON
    lines), written after the record, so finished work can be audited.
    """
    done = finished_proposal(out_path, key)
    if done is not None:
        return done
    started = time.time()
    cfg = params.adapt
    if resume_from is None:
        model, arch, _ = load_checkpoint(parent_checkpoint)
        prune_group(model, plan.group, plan.n_remove, data.input_shape, cfg.importance)
    else:
        model, arch, _ = load_checkpoint(resume_from)
    steps = cfg.short_term_steps if steps is None else steps
    stats = train(model, data.train, cfg, steps, seed=plan.seed + 7919 * screening_round)
    accuracy = evaluate(model, data.holdout, threads=cfg.threads, device=cfg.train_device,
                        channels_last=cfg.channels_last)
    faults.point("proposal-trained")
    sha = save_checkpoint(out_path, model, arch, {"plan": asdict(plan), "holdout_accuracy": accuracy})
    faults.point("proposal-saved")
    result = ProposalResult(plan, out_path, accuracy, stats.seconds)
    atomic_write_json(Path(out_path).with_suffix(".json"),
                      {**result.to_dict(), "plan": asdict(plan), "key": key, "checkpoint_sha256": sha,
                       "steps": steps, "screening_round": screening_round})
    if journal is not None:
        entry = {"iteration": plan.iteration, "group": plan.group, "key": key, "pid": os.getpid(),
                 "steps": steps, "round": screening_round, "started": started, "finished": time.time()}
        with open(journal, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
    return result


def halving_schedule(total_steps: int, rounds: int, proposals: int) -> list[int]:
    """Cumulative training steps after each screening round: ``total_steps / 2**(rounds-1-k)``,
    one round (no screening) when there are two proposals or fewer, or too few steps to share."""
    if proposals <= 2 or total_steps < 2:
        return [total_steps]
    marks = [max(1, round(total_steps / 2 ** (rounds - 1 - k))) for k in range(rounds)]
    return sorted(set(marks))


def rank_proposals(results: list[ProposalResult], rule: str, parent_accuracy: float,
                   parent_ms: float) -> list[ProposalResult]:
    """Proposals best first. The paper's rule, ``accuracy``: highest holdout accuracy (ties: lower
    latency, then group name). ``accuracy_per_latency``: smallest accuracy loss per ms removed."""
    if rule == "accuracy":
        return sorted(results, key=lambda r: (-r.holdout_accuracy, r.plan.latency_ms, r.plan.group))

    def loss_per_ms(r: ProposalResult) -> float:
        return (parent_accuracy - r.holdout_accuracy) / max(parent_ms - r.plan.latency_ms, 1e-6)

    return sorted(results, key=lambda r: (loss_per_ms(r), r.plan.latency_ms, r.plan.group))


def pick_best(results: list[ProposalResult], rule: str, parent_accuracy: float, parent_ms: float) -> ProposalResult:
    """The first of ``rank_proposals``."""
    if not results:
        raise ValueError("no proposals to pick from")
    return rank_proposals(results, rule, parent_accuracy, parent_ms)[0]


def measure_point(ctx: Context, model: nn.Module, reference: dict[str, Any] | None = None,
                  passes: int = 1) -> dict[str, float]:
    """Direct and LUT latency, MACs and parameters of one network (alone: the fastest of ``passes``
    measurements, as noise only adds time; against ``reference``: the median of ``passes`` sessions).

    With ``reference`` (a baseline record), the network is timed interleaved with the baseline
    network and ``measured_ms`` is the measured ratio times the baseline's recorded latency: drift
    in machine speed between the two measurements cancels, so a budget set as a share of the start
    is checked reliably.
    """
    if reference is None:
        measured = {"measured_ms": min(ctx.platform.measure_network(model, ctx.input_shape).median_ms
                                       for _ in range(passes))}
    else:
        baseline, _, _ = load_checkpoint(reference["checkpoint"])
        sessions = sorted((own.median_ms / ref.median_ms, own.median_ms, ref.median_ms) for own, ref in
                          (ctx.platform.measure_networks([model, baseline], ctx.input_shape) for _ in range(passes)))
        ratio, own_ms, ref_ms = sessions[len(sessions) // 2]  # the median session: one disturbed is outvoted
        measured = {
            "measured_ms": ratio * reference["measured_ms"],
            "measured_raw_ms": own_ms,
            "reference_raw_ms": ref_ms,
        }
    return {**measured, "lut_ms": ctx.estimator.estimate_ms(model), **count_macs_params(model, ctx.input_shape)}


@dataclass
class RunState:
    """``state.json`` of an adaptation run directory: rewritten atomically after each step.

    ``status``: running, done (every budget met), unmet (the loop could not go on; ``reason`` says
    why) or max_iterations. ``latency_points``: every network the run measured besides the start
    (picks and candidates), with the prediction made before measuring it: the latency model's
    data. ``pending``: the current iteration's plan, kept so that a resumed run trains exactly the
    proposals it had planned.
    """

    config_hash: str
    pretrained_sha256: str
    baseline: dict[str, Any]
    iterations: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    reason: str | None = None
    latency_points: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, Any] | None = None

    def latency(self, record: dict[str, Any], cfg: AdaptConfig) -> float:
        """A record's latency (``adapt.latency_source``): measured, or the LUT's."""
        return record["measured_ms" if cfg.latency_source == "measured" else "lut_ms"]

    def start_ms(self, cfg: AdaptConfig) -> float:
        return self.latency(self.baseline, cfg)

    def values(self, record: dict[str, Any], cfg: AdaptConfig) -> dict[str, float]:
        """A record's value of every resource: latency, MACs and parameters."""
        return {"latency": self.latency(record, cfg), "macs": float(record["macs"]), "params": float(record["params"])}

    def budgets(self, cfg: AdaptConfig) -> list[Budget]:
        """Every budget of the run (primary first), resolved against the start network."""
        return budgets(self.values(self.baseline, cfg), cfg)

    def unmet(self, cfg: AdaptConfig) -> list[Budget]:
        """The budgets the current network does not meet yet."""
        return unmet(self.values(self.current, cfg), self.budgets(cfg))

    def latency_model(self, cfg: AdaptConfig) -> LatencyModel:
        """The run's latency model: the start network and every network measured since."""
        return LatencyModel(self.baseline["lut_ms"], [LatencyPoint(**p) for p in self.latency_points],
                            anchored=cfg.latency_source == "measured")

    @property
    def current(self) -> dict[str, Any]:
        return self.iterations[-1] if self.iterations else self.baseline

    def save(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / STATE_FILE, asdict(self))


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
            old = RunState(**read_run_state(state_path))
        except (RunStateError, TypeError) as exc:
            if not params.adapt.fresh:
                raise exc if isinstance(exc, RunStateError) else run_state_error(state_path, exc) from None
            old = RunState("damaged", "", {})  # adapt.fresh: moved aside below like any other run
        same = old.config_hash == config_hash and old.pretrained_sha256 == pretrained_sha
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
    baseline = {
        "iteration": 0,
        "checkpoint": str(baseline_ckpt),
        "holdout_accuracy": evaluate(model, ctx.data.holdout, threads=params.adapt.threads,
                                     channels_last=params.adapt.channels_last),
        **measure_point(ctx, model, passes=START_PASSES),
    }
    probe = RunState(config_hash, pretrained_sha, baseline)
    check_reachable(ctx, model, probe.budgets(params.adapt), probe.values(baseline, params.adapt))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(baseline_ckpt, Path(params.pretrain.checkpoint).read_bytes())
    atomic_write_json(run_dir / "surgery.json", surgery)
    baseline["checkpoint_sha256"] = file_sha256(baseline_ckpt)
    state = RunState(config_hash, pretrained_sha, baseline)
    state.save(run_dir)
    ctx.estimator.save()
    return run_dir, state


def smallest_network(model: nn.Module, input_shape: tuple[int, ...], grid: dict[str, dict[str, int]],
                     exclude: list[str]) -> nn.Module:
    """A copy of ``model`` with every group it may prune at the narrowest width of the LUT grid."""
    smallest = copy.deepcopy(model)
    for group in prunable_groups(smallest, input_shape, exclude):
        g = grid[group.id]
        floor = channel_grid(g["original"], g["step"], g["min"])[-1]
        if floor < group.channels:
            prune_group(smallest, group.id, group.channels - floor, input_shape)
    return smallest


def unreachable_error(missed: list[Budget], start: dict[str, float], floors: dict[str, float],
                      min_channel_ratio: float, when: str = "") -> BudgetUnreachableError:
    """The error for budgets that even the smallest network misses, naming each and the fix."""
    what = "; ".join(
        f"{b.describe()} (start {format_value(b.resource, start[b.resource])}, smallest network "
        f"{format_value(b.resource, floors[b.resource])}{' by the LUT' if b.resource == 'latency' else ''})"
        for b in missed
    )
    return BudgetUnreachableError(
        f"unreachable budget: with every layer at its minimum width (lut.min_channel_ratio={min_channel_ratio}) "
        f"the network still misses {what}. Fix: raise adapt.budget_ratio / adapt.budget or the constraint, or "
        f"lower lut.min_channel_ratio and rebuild the LUT{when}"
    )


def check_reachable(ctx: Context, model: nn.Module, all_budgets: list[Budget], start: dict[str, float]) -> None:
    """Fail before any training if even the smallest network the grid allows misses a budget."""
    smallest = smallest_network(model, ctx.input_shape, ctx.estimator.lut.grid, ctx.params.adapt.exclude)
    floors = {
        "latency": start["latency"] - (ctx.estimator.layer_sum_ms(model) - ctx.estimator.layer_sum_ms(smallest)),
        **count_macs_params(smallest, ctx.input_shape),
    }
    missed = [b for b in all_budgets if not b.met(floors[b.resource])]
    if missed:
        raise unreachable_error(missed, start, floors, ctx.params.lut.min_channel_ratio)


def proposal_path(run_dir: Path, plan: ProposalPlan) -> Path:
    return run_dir / "proposals" / f"{plan.iteration + 1:03d}" / f"{plan.group}.pt"


JOURNAL_FILE = "executions.jsonl"
