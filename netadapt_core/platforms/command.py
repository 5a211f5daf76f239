"""``command``: a device the pipeline cannot run on (a phone over adb, a board over ssh), timed by a
user command that gets each layer or network as a file (an ONNX model, or an ExecuTorch program:
``platform.command.format``) and prints its latency."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config import PlatformConfig
from .base import Measurement, PlatformError
from .onnx import OnnxGraphPlatform, OnnxSettings


class CommandSettings(OnnxSettings):
    """``platform.command``: the argv that times a model file on the device, the file's format, and
    the device's label."""

    PLACEHOLDERS: ClassVar[tuple[str, ...]] = (
        "model", "onnx", "pte", "batch", "input_shape", "repeats", "warmup", "threads", "min_sample_ms", "python",
    )

    argv: list[str] | None = Field(
        None, description="argv run per measurement, with placeholders " + ", ".join(PLACEHOLDERS),
    )
    timeout_s: float = Field(600.0, gt=0, description="one run may last this long")
    device_name: str | None = Field(None, description="a label for the device (part of the LUT key)")
    format: Literal["onnx", "pte"] = Field(
        "onnx", description="the file the command gets: onnx (an ONNX model) or pte (an ExecuTorch program, the "
        "file `netadapt export` ships for ExecuTorch)",
    )
    pte_backend: Literal["xnnpack", "portable"] = Field(
        "xnnpack", description="format pte: the ExecuTorch backend the programs are lowered to",
    )

    @field_validator("argv")
    @classmethod
    def _known_placeholders(cls, argv: list[str] | None) -> list[str] | None:
        if argv is None:
            return None
        if not argv or not argv[0]:
            raise ValueError("platform.command.argv must be a non-empty argv list, e.g. [adb, shell, ...]")
        for arg in argv:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
            except ValueError as exc:
                raise ValueError(
                    f"platform.command.argv argument {arg!r}: {exc} (write a literal brace as {{{{ or }}}})"
                ) from None
            unknown = fields - set(cls.PLACEHOLDERS)
            if unknown:
                raise ValueError(
                    f"platform.command.argv argument {arg!r} uses unknown placeholder(s) {sorted(unknown)}; "
                    f"known: {', '.join('{' + p + '}' for p in cls.PLACEHOLDERS)}"
                )
        return argv

    @model_validator(mode="after")
    def _placeholder_matches_format(self) -> CommandSettings:
        other = {"onnx": "pte", "pte": "onnx"}[self.format]
        if self.argv and any(f"{{{other}}}" in arg for arg in self.argv):
            raise ValueError(
                f"platform.command.argv uses {{{other}}} but platform.command.format is {self.format!r}. Fix: set "
                f"platform.command.format: {other}, or write the file as {{{self.format}}} (or {{model}})"
            )
        return self

    def check_selected(self) -> None:
        if not self.argv:
            raise ValueError(
                "platform 'command' needs platform.command.argv: the argv that times an ONNX file on the "
                "device, e.g. [\"{python}\", scripts/stand_in_device.py, \"{onnx}\"] "
                "(see examples/command_platform.yaml)"
            )


LATENCY_LINE = re.compile(
    r"^\s*latency_ms:\s*(?P<ms>[-+0-9.eE]+)"
    r"(?:\s+iqr_ms:\s*(?P<iqr>[-+0-9.eE]+))?(?:\s+samples:\s*(?P<n>\d+))?\s*$",
    re.MULTILINE,
)


def parse_latency(stdout: str) -> Measurement | None:
    """The last ``latency_ms: <median> [iqr_ms: <iqr>] [samples: <n>]`` line of ``stdout``, if any."""
    matches = list(LATENCY_LINE.finditer(stdout))
    if not matches:
        return None
    last = matches[-1]
    try:
        ms = float(last["ms"])
        iqr = float(last["iqr"]) if last["iqr"] else 0.0
    except ValueError:
        return None
    if not (math.isfinite(ms) and ms > 0 and math.isfinite(iqr) and iqr >= 0):
        return None
    return Measurement(ms, iqr, int(last["n"]) if last["n"] else 0)


class CommandPlatform(OnnxGraphPlatform):
    """A device the pipeline cannot run on, timed by a user command (``platform.command.argv``).

    Per measurement the module is written to a temporary file, an ONNX model (``.onnx``, input
    ``input``, output ``output``) or with ``platform.command.format: pte`` an ExecuTorch program
    (``.pte``, lowered to ``platform.command.pte_backend``), both of fixed shape, and the argv is run
    with these placeholders filled in: ``{model}`` the file (also ``{onnx}`` / ``{pte}``),
    ``{batch}``, ``{input_shape}`` (``N,C,H,W``), ``{repeats}``, ``{warmup}``, ``{threads}``,
    ``{min_sample_ms}`` (the ``platform.*`` settings) and ``{python}`` (this interpreter). Write a
    literal brace as ``{{`` or ``}}``.

    Output format: the command prints, on its stdout, a line::

        latency_ms: <median ms> [iqr_ms: <inter-quartile range ms>] [samples: <n>]

    (the last such line counts; anything else is ignored). A non-zero exit, no such line, or a run
    longer than ``platform.command.timeout_s`` is an error. Networks are timed one after another, not
    interleaved: each is a separate command run. ``scripts/stand_in_device.py`` is a local example.
    """

    name = "command"
    Settings = CommandSettings

    def __init__(self, cfg: PlatformConfig) -> None:
        super().__init__(cfg)
        if not self.options.argv:
            raise PlatformError("platform 'command' needs platform.command.argv (examples/command_platform.yaml)")
        if self.options.format == "pte" and importlib.util.find_spec("executorch") is None:
            raise PlatformError("platform.command.format: pte lowers each model to an ExecuTorch program, which "
                                "needs the executorch package. Fix: .venv/bin/pip install executorch, or set "
                                "platform.command.format: onnx")
        self.program()  # a program that cannot run is refused now, before any export or measurement

    def program(self) -> str:
        """The executable ``platform.command.argv[0]`` names (placeholders filled in), or a PlatformError."""
        name = self.argv(Path("model.onnx"), (self.cfg.batch_size, 1, 1, 1), self.cfg.repeats)[0]
        found = shutil.which(name) if os.sep not in name else (name if Path(name).is_file() else None)
        if found is None:
            where = "does not exist" if os.sep in name else "is not a program on PATH"
            raise PlatformError(
                f"platform.command.argv[0] {name!r} {where}. Fix: set platform.command.argv to an argv whose first "
                "element is a program on PATH or a path to one, e.g. [\"{python}\", scripts/stand_in_device.py, "
                "\"{onnx}\"] (examples/command_platform.yaml)"
            )
        if not os.access(found, os.X_OK):
            raise PlatformError(
                f"platform.command.argv[0] {found!r} is not executable. Fix: `chmod +x {found}`, or start "
                "platform.command.argv with its interpreter, e.g. [\"{python}\", script.py, ...]"
            )
        return found

    def metadata(self) -> dict[str, Any]:
        """The command itself (with placeholders) and the device label key the LUT, not this host."""
        meta = {
            "platform": self.name,
            "device_name": self.options.device_name,
            "command": list(self.options.argv or []),
            "threads": self.cfg.threads,
            "batch_size": self.cfg.batch_size,
            "dtype": self.cfg.dtype,
            **super().metadata(),
        }
        if self.options.format == "pte":  # (ONNX tables keep the key they had before pte existed)
            meta |= {"format": "pte", "executorch": importlib.metadata.version("executorch"),
                     "backend": self.options.pte_backend}
            meta.pop("onnx_opset")
        return meta

    def _export(self, module: nn.Module, shape: tuple[int, ...]) -> bytes:
        """An ONNX model, or with ``platform.command.format: pte`` an ExecuTorch program."""
        if self.options.format == "onnx":
            return super()._export(module, shape)
        from .executorch_cpu import lower_to_executorch

        return lower_to_executorch(module, shape, self.options.pte_backend)

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), "command_timeout_s": self.options.timeout_s}

    def _time_graphs(self, graphs: list[bytes], input_shape: tuple[int, ...], repeats: int,
                     cold_weights: bool, probe: bool = False) -> list[Measurement]:
        # cold weights are the device command's business: it gets one file and times it as it sees fit
        results = []
        with tempfile.TemporaryDirectory(prefix="netadapt-command-") as tmp:
            for i, graph in enumerate(graphs):
                path = Path(tmp) / f"model{i}.{self.options.format}"
                path.write_bytes(graph)
                results.append(self._run_command(path, input_shape, repeats))
        return results

    def argv(self, model: Path, input_shape: tuple[int, ...], repeats: int) -> list[str]:
        values = {
            "model": str(model), "onnx": str(model), "pte": str(model), "batch": input_shape[0], "input_shape": ",".join(map(str, input_shape)),
            "repeats": repeats, "warmup": self.cfg.warmup, "threads": self.cfg.threads,
            "min_sample_ms": self.cfg.min_sample_ms, "python": sys.executable,
        }
        return [arg.format(**values) for arg in self.options.argv or []]

    def _run_command(self, model: Path, input_shape: tuple[int, ...], repeats: int) -> Measurement:
        argv = self.argv(model, input_shape, repeats)
        timeout = self.options.timeout_s
        try:
            # own process group: a timeout then also ends what a shell wrapper started (adb, ssh)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
        except OSError as exc:
            raise PlatformError(
                f"platform.command.argv {argv!r} could not start: {exc}. Fix: platform.command.argv[0] must be a "
                "program on PATH or a path to one."
            ) from None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise PlatformError(
                f"platform.command.argv {argv!r} timed out after {timeout:g} s. Fix: check the device is "
                "reachable, or raise platform.command.timeout_s."
            ) from None
        if proc.returncode != 0:
            raise PlatformError(
                f"platform.command.argv {argv!r} failed with exit status {proc.returncode}; "
                f"stderr: {stderr.strip()[-2000:] or '(empty)'}"
            )
        measurement = parse_latency(stdout)
        if measurement is None:
            raise PlatformError(
                f"platform.command.argv {argv!r} printed no latency: expected a line "
                f"'latency_ms: <median> [iqr_ms: <iqr>]' with a positive number; stdout ended: "
                f"{stdout.strip()[-500:] or '(empty)'}"
            )
        return measurement
