"""Checks before a stage starts: every input it reads and every output it writes, and whether the
budget is reachable at all, so that a bad setting fails in seconds with the fix, before Prefect
starts or a measurement runs; reading the adaptation's run state for the later stages."""

from __future__ import annotations

from pathlib import Path

from ..adapt import (
    STATE_FILE,
    IterationRecord,
    RunState,
    architecture,
    check_pretrained,
    open_estimator,
    smallest_network,
    unreachable_error,
)
from ..checkpoint import (
    CheckpointError,
    check_writable,
    check_writable_dir,
    load_checkpoint,
)
from ..config import Params
from ..data import check_data
from ..errors import StageOrderError
from ..export import MANIFEST
from ..models import check_network
from ..models.weights import load_weights
from ..platforms import make_platform
from ..resources import count_macs_params
from ..schedule import budgets as resolve_budgets
from .common import Log
from .export import finetuned_checkpoint
from .pretrain import pretrain_hash, pretrained_up_to_date

# what each stage writes: (setting, names a folder); ``lut_check`` is ``netadapt lut --check``
OUTPUTS: dict[str, list[tuple[str, bool]]] = {
    "data": [("report.data", False)],
    "pretrain": [("pretrain.checkpoint", False)],
    "lut": [("lut.path", False), ("lut.on_demand_path", False)],
    "lut_check": [("report.lut_check", False), ("report.plots_dir", True)],
    "adapt": [("adapt.run_dir", True), ("lut.on_demand_path", False)],
    "finetune": [("finetune.out_dir", True)],
    "export": [("export.out_dir", True)],
    "report": [("report.metrics", False), ("report.tradeoff", False), ("report.layers", False),
               ("report.html", False), ("report.plots_dir", True)],
}


# a latency budget judged by measurement is checked before measuring against a start this much faster
# than the LUT's estimate of it (machines drift; a LUT tuned on one VM ran 15-28% off on another), so
# that only a budget that is clearly out of reach is refused before the start is measured
PRECHECK_START_SHARE = 0.6


def check_inputs(stage: str, params: Params, check: bool = False, log: Log = print) -> None:
    """Check what ``stage`` reads and where it writes, before it starts any work (the CLI runs this
    before Prefect starts, so a refusal is one line): the data set, the weights file, the platform,
    the outputs of earlier stages (checkpoints, LUT, run state), clearly unreachable budgets and the
    output paths. Every refusal is a ``NetAdaptError`` naming the setting or file and the fix; the
    stages check again as they go.

    ``stage`` is a CLI stage (``data`` ... ``report``, ``all``); ``check`` is ``--check`` (lut, export).
    """
    if stage == "all":
        for outputs in OUTPUTS.values():
            _check_outputs(params, outputs)
        check_data(params.data)
        _check_start_network(params)
        make_platform(params.platform)
        if (Path(params.adapt.run_dir) / STATE_FILE).is_file():  # the adaptation would resume it
            load_run_state(params)
        return
    if stage == "lut" and check:
        _check_outputs(params, OUTPUTS["lut_check"])
        arch, input_shape = architecture(params)
        open_estimator(params, arch, input_shape)
        if Path(params.pretrain.checkpoint).is_file():
            load_checkpoint(params.pretrain.checkpoint)
        if (Path(params.adapt.run_dir) / STATE_FILE).is_file():
            _check_iteration_checkpoints(load_run_state(params).iterations)
        return
    if stage == "export":
        path, _, _ = finetuned_checkpoint(params)
        load_checkpoint(path)
        if check:
            if not (Path(params.export.out_dir) / MANIFEST).is_file():
                raise StageOrderError(f"no export in {params.export.out_dir} ({MANIFEST} is missing); run "
                                      "`netadapt export` first")
        else:
            _check_outputs(params, OUTPUTS["export"])
        return
    _check_outputs(params, OUTPUTS.get(stage, []))
    if stage == "pretrain":
        if pretrained_up_to_date(params, pretrain_hash(params)[0], log=lambda _: None) is None:
            check_data(params.data)
            _check_start_network(params)  # else the stage has nothing to do
        return
    if stage in ("data", "adapt", "finetune"):
        check_data(params.data)
    if stage == "lut":
        architecture(params)
        make_platform(params.platform)
    elif stage == "adapt":
        if (Path(params.adapt.run_dir) / STATE_FILE).is_file():
            load_run_state(params)
        check_budgets_reachable(params, log)
    elif stage == "finetune":
        state = load_run_state(params)
        if state.iterations:  # else the stage has nothing to fine-tune
            _, arch, meta = load_checkpoint(params.pretrain.checkpoint)
            check_pretrained(params, arch, meta)
            open_estimator(params, arch, tuple(meta["input_shape"]))
            _check_iteration_checkpoints(state.iterations if params.finetune.points == "all" else state.iterations[-1:])
    elif stage == "report":
        state = load_run_state(params)
        load_checkpoint(params.pretrain.checkpoint)
        _check_iteration_checkpoints(state.iterations[-1:])


def _check_outputs(params: Params, outputs: list[tuple[str, bool]]) -> None:
    for key, is_folder in outputs:
        section, name = key.split(".")
        path = getattr(getattr(params, section), name)
        (check_writable_dir if is_folder else check_writable)(path, key)


def _check_start_network(params: Params) -> None:
    """The network as built for the data set runs, and ``model.weights`` (if set) fits it."""
    arch, input_shape = architecture(params)
    model = arch.build()
    check_network(model, input_shape, arch.kwargs["num_classes"], arch.name)
    if params.model.weights:
        load_weights(model, params.model.weights, arch.name)


def _check_iteration_checkpoints(records: list[IterationRecord]) -> None:
    for record in records:
        if not Path(record.checkpoint).is_file():
            raise CheckpointError(
                f"checkpoint {record.checkpoint} of the adaptation's iteration {record.iteration} does not "
                "exist. Fix: restore the run directory (e.g. `dvc checkout`), or run `netadapt adapt` again"
            )


def load_run_state(params: Params) -> RunState:
    """The adaptation in ``adapt.run_dir``: a ``StageOrderError`` when there is none, a ``RunStateError``
    when its ``state.json`` is damaged (every record is checked as it loads: ``RunState``)."""
    path = Path(params.adapt.run_dir) / STATE_FILE
    if not path.is_file():
        raise StageOrderError(f"no adaptation in {params.adapt.run_dir}; run `netadapt adapt` first")
    return RunState.load(path)


def check_budgets_reachable(params: Params, log: Log = print) -> None:
    """Refuse, before the start network is measured or anything trained, budgets that even the
    smallest network the LUT grid allows misses (as ``adapt.check_reachable`` does once the start is
    measured).

    MACs and parameters are counted, exactly. A latency budget is judged on the LUT: the start's
    estimate minus what the LUT says the smallest network saves. Judged by measurement
    (``adapt.latency_source: measured``), it is refused here only if it is also missed from a start
    ``PRECHECK_START_SHARE`` of the LUT's estimate (the machine may have drifted since the LUT was
    built; the adaptation checks again once it has measured the start). Layers of the smallest
    network the LUT lacks are measured for a latency budget, and kept in ``lut.on_demand_path`` when
    the budgets pass.
    """
    cfg = params.adapt
    model, arch, meta = load_checkpoint(params.pretrain.checkpoint)
    input_shape = tuple(meta["input_shape"])
    check_pretrained(params, arch, meta)
    estimator = open_estimator(params, arch, input_shape)
    smallest = smallest_network(model, input_shape, estimator.lut.grid, cfg.exclude)
    start: dict[str, float] = {"latency": estimator.estimate_ms(model), **count_macs_params(model, input_shape)}
    floors: dict[str, float] = {"latency": start["latency"], **count_macs_params(smallest, input_shape)}
    all_budgets = resolve_budgets(start, cfg)
    saved_ms = 0.0
    if any(b.resource == "latency" for b in all_budgets):
        saved_ms = estimator.layer_sum_ms(model) - estimator.layer_sum_ms(smallest)
        floors["latency"] = start["latency"] - saved_ms
    share = PRECHECK_START_SHARE if cfg.latency_source == "measured" else 1.0
    cautious = {**start, "latency": start["latency"] * share}
    cautious_floors = {**floors, "latency": cautious["latency"] - saved_ms}
    missed = [b for b, c in zip(all_budgets, resolve_budgets(cautious, cfg))
              if not c.met(cautious_floors[c.resource])]
    if missed:
        raise unreachable_error(missed, start, floors, params.lut.min_channel_ratio,
                                " (checked before measuring or training anything)")
    if estimator.measured_on_demand:
        estimator.save()  # the adaptation reuses the layers measured here

