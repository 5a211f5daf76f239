"""Settings for every stage, read from ``params.yaml`` and validated before any work starts.

``params.yaml`` has one section per stage (data, model, pretrain, platform, lut, adapt, finetune,
report). Each section is a pydantic model that forbids unknown keys, so a typo fails loudly with the
key's dotted path and what is allowed. Overrides use the same dotted paths::

    params = load_params("params.yaml", ["adapt.budget_ratio=0.6", "platform.threads=2"])
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .errors import NetAdaptError


class ConfigError(NetAdaptError, ValueError):
    """A settings file or override is wrong; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which images, where they live, and how the training set is split."""

    dataset: Literal["fashion_mnist", "cifar10", "imagefolder"] = "fashion_mnist"
    root: str = Field("data", description="folder for downloaded / unpacked data sets")
    debian_dir: str = Field(
        "/usr/share/datasets/fashion-mnist",
        description="gzipped IDX files of Debian's dataset-fashion-mnist package",
    )
    download: bool = Field(False, description="download through torchvision when the files are missing")
    image_folder: str | None = Field(
        None, description="imagefolder only: a folder with train/ and test/ class sub-folders"
    )
    image_size: int | None = Field(
        None, ge=8, description="resize images to this square size (None: keep the data set's own)"
    )
    holdout_size: int = Field(
        1000, ge=1, description="images carved from the training set to score proposals"
    )
    train_subset: int | None = Field(None, ge=1, description="use only this many training images")
    test_subset: int | None = Field(None, ge=1, description="use only this many test images")
    seed: int = 0

    @model_validator(mode="after")
    def _imagefolder_needs_path(self) -> DataConfig:
        if self.dataset == "imagefolder" and not self.image_folder:
            raise ValueError("dataset 'imagefolder' needs data.image_folder: a folder with train/ and test/")
        return self


def _registered(kind: str, name: str) -> str:
    """Check ``name`` against a registry (imported late: the registries import this module)."""
    if kind == "model":
        from .models import check_model_name

        return check_model_name(name)
    if kind == "platform":
        from .platforms import PLATFORMS as registry
    else:
        from .importance import IMPORTANCE as registry
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(registry.names())}")
    return name


class ModelConfig(_Section):
    """The starting network: where it comes from, its builder's arguments, and its weights."""

    RENAMED: ClassVar[dict[str, str]] = {k: f"model.kwargs.{k}" for k in ("width_mult", "first_stride", "dropout")}

    name: str = Field(
        "mobilenet_v1",
        description="mobilenet_v1 | mobilenet_v2 | tiny_cnn | torchvision:<builder> | timm:<name> | "
        "a name an installed package registers (entry-point group netadapt.models)",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="the builder's own keyword arguments, e.g. {width_mult: 0.5} or {zero_init_residual: true}",
    )
    weights: str | None = Field(
        None,
        description="a state_dict file (.safetensors, or .pt/.pth read with weights_only) that replaces "
        "pretraining; it must fit the network as built for the data set (classes, input channels)",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in cls.RENAMED.items():
                if old in data:
                    raise ValueError(f"model.{old} is now {new} (the builder's own arguments live in model.kwargs)")
        return data

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return _registered("model", name)

    @field_validator("kwargs")
    @classmethod
    def _json_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(kwargs) & {"num_classes", "in_channels", "image_size", "in_chans"})
        if reserved:
            raise ValueError(f"model.kwargs may not set {reserved}: netadapt sets them from the data set")
        try:
            json.dumps(kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model.kwargs must hold plain values (numbers, strings, lists): {exc}") from None
        return kwargs


def _device_field() -> Any:
    return Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$",
                 description="where this stage trains: cpu or cuda[:N] (latency is always measured on the platform)")


class TrainConfig(_Section):
    """Shared SGD settings."""

    @property
    def training_device(self) -> str:
        return "cpu"

    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0)
    threads: int = Field(2, ge=1, description="torch threads while training")
    seed: int = 0
    channels_last: bool = Field(
        True, description="train and evaluate in the channels-last memory format (oneDNN's faster CPU "
                          "kernels: 1.6x for MobileNetV1 on an AMD EPYC); checkpoints stay contiguous")


class PretrainConfig(TrainConfig):
    epochs: float = Field(0.5, gt=0, description="may be fractional: 0.5 is half an epoch")
    lr: float = Field(0.1, gt=0)
    checkpoint: str = "artifacts/pretrained.pt"
    device: str = _device_field()

    @property
    def training_device(self) -> str:
        return self.device


class PlatformSettings(_Section):
    """A platform's own settings: the keys under ``platform.<its name>``. A platform declares a
    subclass as its ``Settings`` (``netadapt_core/platforms``)."""

    def check_selected(self) -> None:
        """Raise ValueError when these settings cannot work with this platform in use."""


# flat keys of earlier versions, now in the section of the platform they belong to
MOVED_PLATFORM_KEYS = {
    "device": "platform.torch-cuda.device",
    "graph_optimization": "platform.onnxruntime-cpu.graph_optimization",
    "onnx_opset": "platform.onnxruntime-cpu.onnx_opset (or platform.command.onnx_opset)",
    "command": "platform.command.argv",
    "command_timeout_s": "platform.command.timeout_s",
    "device_name": "platform.command.device_name",
}


class PlatformConfig(_Section):
    """Where latency is measured and how: ``name`` picks the platform, the other fields are the
    timing method every platform shares, and ``platform.<name>`` holds one platform's own settings,
    validated by that platform's ``Settings`` model (``options`` is the one in use). Sections of
    other platforms may stay in the file (they are checked, not used) and are left out of dumps
    and hashes: they change no measurement."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "torch-cpu"
    threads: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1)
    dtype: Literal["float32"] = "float32"
    warmup: int = Field(10, ge=0, description="untimed calls before timing")
    repeats: int = Field(21, ge=3, description="timed samples; the median is kept")
    min_sample_ms: float = Field(
        0.5, gt=0, description="each sample loops the layer until it lasts this long (timer noise)"
    )
    network_repeats: int = Field(31, ge=3, description="timed samples for a whole network")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in MOVED_PLATFORM_KEYS.items():
                if old in data and not (old == "command" and isinstance(data[old], dict)):
                    raise ValueError(f"platform.{old} is now {new} (each platform's own settings live "
                                     "under platform.<its name>, see params.yaml)")
        return data

    @field_validator("name")
    @classmethod
    def _known_platform(cls, name: str) -> str:
        return _registered("platform", name)

    @model_validator(mode="after")
    def _platform_sections(self) -> PlatformConfig:
        from .platforms import PLATFORMS

        sections = self.__pydantic_extra__
        assert sections is not None
        if self.name not in sections:
            sections[self.name] = None
        for key, value in list(sections.items()):
            if key not in PLATFORMS:
                raise ValueError(
                    f"platform.{key}: unknown key: neither a setting every platform shares "
                    f"({', '.join(type(self).model_fields)}) nor a platform's section "
                    f"({', '.join(PLATFORMS.names())}); check the spelling against params.yaml"
                )
            model = getattr(PLATFORMS.get(key), "Settings", PlatformSettings)
            if isinstance(value, model):
                continue
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"platform.{key} must be a mapping of {key}'s own settings, got {value!r}")
            try:
                sections[key] = model.model_validate(value or {})
            except ValidationError as err:
                problems = []
                for e in err.errors():
                    where = f"platform.{key}." + ".".join(map(str, e["loc"]))
                    message = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
                    problems.append(message if message.startswith(where) else f"{where}: {message}")
                raise ValueError("; ".join(problems)) from None
        sections[self.name].check_selected()
        return self

    @property
    def options(self) -> PlatformSettings:
        """The settings of the platform in use (``platform.<name>``)."""
        assert self.__pydantic_extra__ is not None
        return self.__pydantic_extra__[self.name]

    @model_serializer(mode="wrap")
    def _dump_the_platform_in_use(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k in type(self).model_fields or (k == self.name and v)}


class LutConfig(_Section):
    path: str = "artifacts/lut.json"
    channel_step: int = Field(8, ge=1, description="filters are removed in multiples of this")
    min_channel_ratio: float = Field(
        0.125, gt=0, le=1, description="a layer keeps at least this share of its original filters"
    )
    remeasure_rounds: int = Field(2, ge=0, description="re-measure non-monotonic entries this often")
    monotonic_tolerance: float = Field(0.05, ge=0, description="relative dip that counts as non-monotonic")
    measure_missing: bool = Field(
        True, description="measure signatures the LUT lacks during adaptation (else: fail)"
    )
    on_demand_path: str = Field(
        "artifacts/lut_on_demand.json",
        description="entries measured on demand, kept beside the LUT and shared by every run",
    )
    check_networks: list[float] = Field(
        default_factory=lambda: [1.0, 0.75, 0.5],
        description="lut --check: uniform width ratios of the pretrained network to compare",
    )


Resource = Literal["latency", "macs", "params"]
# keys of earlier versions: a params.yaml that still uses one gets told the new name
RENAMED_KEYS = {"budget_ms": "adapt.budget (in the unit of adapt.resource: ms for latency)",
                "initial_reduction_ms": "adapt.initial_reduction (in the unit of adapt.resource)"}


class BudgetSpec(_Section):
    """A secondary budget on one resource: a share of the start network's value, or a limit."""

    ratio: float | None = Field(None, gt=0, lt=1, description="share of the start network's value")
    max: float | None = Field(None, gt=0, description="absolute limit: ms (latency), MACs or parameters")

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSpec:
        if (self.ratio is None) == (self.max is None):
            raise ValueError("give a constraint exactly one of ratio (share of the start) or max (absolute)")
        return self


SettingRole = Literal["proposal", "run", "execution"]


class AdaptConfig(TrainConfig):
    """The NetAdapt loop: schedule, budgets, proposals.

    ``ROLES`` says what each setting is to the caches; it must name every field (checked when the
    class is made, so a new setting without a role fails at import instead of being left out of a
    cache key): ``proposal`` — read by a proposal's training: part of its cache key and of the run's
    hash; ``run`` — decides plans, picks or the stop: part of the run's hash (a resume with another
    value is refused or restarts, ``on_changed_settings``); ``execution`` — where and how the work
    runs: neither (a resume may change it).
    """

    ROLES: ClassVar[dict[str, SettingRole]] = {
        **dict.fromkeys(("short_term_steps", "lr", "batch_size", "momentum", "weight_decay", "importance",
                         "channels_last"), "proposal"),
        **dict.fromkeys(("threads", "seed", "resource", "budget_ratio", "budget", "constraints",
                         "initial_reduction_ratio", "initial_reduction", "reduction_decay", "train_device",
                         "screening", "halving_rounds", "exclude", "pick", "latency_source", "min_proposal_share",
                         "verify", "verify_repeats", "verify_max_extra_steps", "slower_tolerance"), "run"),
        **dict.fromkeys(("fresh", "max_iterations", "run_dir", "runner", "workers", "dask_address",
                         "proposal_retries", "proposal_timeout_s", "on_changed_settings"), "execution"),
    }

    @classmethod
    def with_role(cls, *roles: SettingRole) -> set[str]:
        return {name for name, role in cls.ROLES.items() if role in roles}

    run_dir: str = "runs/adapt"
    resource: Resource = Field(
        "latency", description="primary resource: sets each iteration's target and so each proposal's size"
    )
    budget_ratio: float | None = Field(0.5, gt=0, lt=1, description="budget as a share of the start")
    budget: float | None = Field(
        None, gt=0, description="absolute budget in the resource's unit: ms, MACs or parameters (overrides ratio)"
    )
    constraints: dict[Resource, BudgetSpec] = Field(
        default_factory=dict,
        description="secondary budgets, e.g. {params: {max: 1.0e6}}: proposals that would break one already "
        "met are rejected, and the run stops only when every budget holds",
    )
    initial_reduction_ratio: float | None = Field(0.1, gt=0, lt=1)
    initial_reduction: float | None = Field(None, gt=0, description="absolute delta_0 in the resource's unit")
    reduction_decay: float = Field(0.96, gt=0, le=1, description="delta_i = delta_0 * decay**i")
    max_iterations: int = Field(30, ge=1)
    short_term_steps: int = Field(20, ge=0, description="SGD steps of short-term fine-tuning")
    train_device: str = _device_field()

    @property
    def training_device(self) -> str:
        return self.train_device
    screening: Literal["full", "halving"] = Field(
        "full",
        description="full: every proposal gets adapt.short_term_steps (the paper); halving: successive "
        "halving, every proposal trains a share, the better half (by adapt.pick on the holdout) goes on, "
        "until the survivors have had the full adapt.short_term_steps",
    )
    halving_rounds: int = Field(3, ge=2, le=6, description="halving: rounds; round k of R trains to "
                                "short_term_steps / 2**(R-1-k) steps")
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    threads: int = Field(1, ge=1, description="torch threads of each proposal's training (adapt.workers at once)")
    importance: str = "l2_norm"
    exclude: list[str] = Field(
        default_factory=list,
        description="layer-name patterns (shell-style, e.g. 'layer4.*') whose groups are never pruned",
    )
    pick: Literal["accuracy", "accuracy_per_latency"] = "accuracy"
    latency_source: Literal["measured", "lut"] = Field(
        "measured",
        description="latency that sets targets and the stop: each pick's direct measurement, or the LUT "
        "estimate (deterministic: the same run gives the same picks on a noisy machine)",
    )
    min_proposal_share: float = Field(
        0.5, ge=0, le=1,
        description="shrink an iteration's step (halving, up to 3 times) until at least this share of the "
        "groups that can still be pruned make a proposal: a real choice every iteration",
    )
    verify: Literal["auto", "all", "none"] = Field(
        "all",
        description="measure candidates before training them (latency_source measured): all, or auto = those "
        "whose predicted latency is within the model's uncertainty of the target, or none; a candidate "
        "measured over the target loses more filters (up to verify_max_extra_steps grid steps)",
    )
    verify_repeats: int = Field(7, ge=3, description="timed samples of a candidate check (interleaved with its parent)")
    verify_max_extra_steps: int = Field(2, ge=0, description="grid steps a candidate may lose after a failed check")
    slower_tolerance: float = Field(
        0.01, ge=0, lt=1,
        description="a pick measured this much slower than its parent is re-measured against it and, if "
        "confirmed, rejected for the next-best proposal",
    )
    fresh: bool = Field(False, description="move an existing run_dir aside instead of resuming it")
    runner: Literal["threads", "processes", "dask"] = Field(
        "threads", description="where proposals run: a thread pool, a process pool, or Dask"
    )
    workers: int = Field(2, ge=1, description="proposals trained at once (each with adapt.threads)")
    dask_address: str | None = Field(
        None, description="runner dask: address of an existing scheduler (None: a local cluster)"
    )
    proposal_retries: int = Field(1, ge=0, description="retries of a failed proposal before it is skipped")
    proposal_timeout_s: float | None = Field(
        None, gt=0, description="a proposal running longer fails (retried, then skipped); null: no limit. With "
                                "runner threads it stops at the next Python step (a hang inside one native "
                                "call is not interrupted there: use runner processes)")
    on_changed_settings: Literal["refuse", "restart"] = Field(
        "refuse", description="run_dir holds a run with other settings: refuse, or move it aside and restart"
    )

    @field_validator("importance")
    @classmethod
    def _known_importance(cls, name: str) -> str:
        return _registered("importance criterion", name)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in RENAMED_KEYS.items():
                if old in data:
                    raise ValueError(f"adapt.{old} was renamed: use {new}")
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> AdaptConfig:
        if self.budget is None and self.budget_ratio is None:
            raise ValueError("set adapt.budget_ratio (share of the start) or adapt.budget (absolute)")
        if self.initial_reduction is None and self.initial_reduction_ratio is None:
            raise ValueError("set adapt.initial_reduction_ratio or adapt.initial_reduction")
        if self.resource in self.constraints:
            raise ValueError(
                f"adapt.constraints.{self.resource} repeats the primary resource (adapt.resource); "
                "set its budget with adapt.budget_ratio / adapt.budget instead"
            )
        return self


def _check_roles(cls: type[AdaptConfig]) -> None:
    if set(cls.ROLES) != set(cls.model_fields):
        raise TypeError(f"{cls.__name__}.ROLES must name every setting: without a role "
                        f"{sorted(set(cls.model_fields) - set(cls.ROLES))}, not settings "
                        f"{sorted(set(cls.ROLES) - set(cls.model_fields))}")


_check_roles(AdaptConfig)


class FinetuneConfig(TrainConfig):
    epochs: float = Field(0.5, gt=0, description="may be fractional")
    lr: float = Field(0.02, gt=0)
    device: str = _device_field()

    @property
    def training_device(self) -> str:
        return self.device
    points: Literal["final", "all"] = Field("final", description="which trade-off points to fine-tune")
    out_dir: str = "artifacts/finetuned"


class TrackingConfig(_Section):
    """MLflow tracking (done by the flows; the core library never imports MLflow)."""

    enabled: bool = True
    uri: str = Field("sqlite:///mlflow.db", description="sqlite:///FILE, or http(s)://host:port of a server")
    experiment: str = "netadapt"
    registered_model: str = Field("netadapt-adapted", description="registry name of the final model")
    connect_timeout_s: float = Field(5.0, gt=0, description="how long to wait for a tracking server")


ExportFormat = Literal["onnx", "torch_export", "torchscript", "executorch"]


class ExportConfig(_Section):
    """``netadapt export``: deployable files of the final fine-tuned network, each checked against PyTorch."""

    out_dir: str = Field("artifacts/export", description="folder of the exported files and export.json")
    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["onnx", "torch_export", "torchscript"], min_length=1,
        description="onnx (model.onnx), torch_export (model.pt2), torchscript (model.torchscript.pt), "
                    "executorch (model.pte: ExecuTorch, XNNPACK)",
    )
    rtol: float = Field(1e-3, ge=0, description="an output may differ from PyTorch's by atol + rtol * |output|")
    atol: float = Field(1e-4, ge=0)
    samples: int = Field(8, ge=1, description="test-set images each exported file is checked on")
    onnx_opset: int = Field(17, ge=9, le=23, description="ONNX opset of model.onnx")

    @field_validator("formats")
    @classmethod
    def _no_repeats(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError(f"export.formats lists a format twice: {formats}")
        return formats


class ReportConfig(_Section):
    metrics: str = "reports/metrics.json"
    tradeoff: str = "reports/tradeoff.csv"
    lut_check: str = "reports/lut_check.csv"
    layers: str = "reports/layers.csv"
    data: str = "reports/data.json"
    plots_dir: str = "reports/plots"
    html: str = Field("reports/report.html", description="one self-contained page: tables and figures inline")


class Params(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    platform: PlatformConfig = Field(default_factory=PlatformConfig)
    lut: LutConfig = Field(default_factory=LutConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def section_hash(self, *sections: str) -> str:
        """Short content hash of the named sections: what a cached result depends on."""
        payload = {name: getattr(self, name).model_dump(mode="json") for name in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {assignment!r}: the key must be section.key, e.g. adapt.budget_ratio")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {assignment!r}: {key!r} is not a section (the settings give it the value {child!r}); "
                f"fix the settings file: {key} must hold a mapping of keys, as in params.yaml"
            )
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override {assignment!r}: the value is not valid YAML ({_yaml_problem(exc)}). Fix: quote it, "
            "e.g. --set 'section.key=\"text\"', or write a list as [a, b] and a mapping as {key: value}"
        ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line and column, 1-based)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _format_validation_error(err: ValidationError, source: str) -> str:
    """Every problem of ``err`` on one line: its dotted key, what is wrong, the value given."""
    problems = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"] if p != "[key]") or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see params.yaml for the known keys)"
        value = problem.get("input")
        given = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "..."
        # a whole section (a check across its keys) says itself what is wrong: no need to echo it
        said = message if message.startswith(f"{where}.") else f"{where}: {message}"
        problems.append(said + ("" if isinstance(value, dict) else f" (got {given})"))
    return f"invalid settings in {source}: " + "; ".join(problems)


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Read and validate settings.

    Args:
        path: a YAML file; None means the built-in defaults.
        overrides: ``section.key=value`` strings applied on top (values parsed as YAML).
    Raises:
        ConfigError: the file is missing or malformed, or a value is not allowed.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"settings file {file} does not exist (pass --params with a params.yaml)")
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{file} is not valid YAML: {_yaml_problem(exc)}. Fix: correct the file (compare params.yaml)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"settings file {file} cannot be read ({exc}); pass --params with a params.yaml") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{file} holds a {type(loaded).__name__}, not a mapping of sections; it must look like params.yaml "
                "(data:, model:, adapt:, ...)"
            )
        tree = loaded or {}
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    if overrides:
        source += f" + --set {overrides[0]}" if len(overrides) == 1 else f" + {len(overrides)} --set overrides"
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def with_overrides(params: Params, overrides: list[str]) -> Params:
    """A validated copy of ``params`` with ``section.key=value`` overrides applied."""
    tree = params.model_dump(mode="json")
    for assignment in overrides:
        _apply_override(tree, assignment)
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, "overrides " + " ".join(overrides))) from None
