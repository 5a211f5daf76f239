"""Every bad input one clean line (issue #12).

Each row of ``CASES`` is a mistake a user makes (a setting, a file, a runner, a platform, a path that
cannot be written, a stage run out of order), walked through the real command line. The CLI must
refuse it with exit status 2 and exactly one line on stderr, ``netadapt STAGE: error: ...``, naming
the key or file and the fix, without a traceback. A refusal comes before any measurement or
training: Prefect never starts (its log lines would be on stderr too), and nothing is written.

Settings errors need no files. The rows that need a pretrained network and its LUT get the
session's tiny ones (``conftest``: a tiny CNN trained on a Fashion-MNIST subset, a LUT measured with
few repeats), copied or damaged per row, never changed in place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
# a refusal reads settings and at most a checkpoint and a LUT: the interpreter's start-up (torch,
# Prefect imports; ~4 s on a busy 2-core VM) dominates. Pretraining alone takes ~20 s.
REFUSAL_SECONDS = 25


@dataclass(frozen=True)
class Files:
    """Good inputs made once for the module, and the data folder."""

    pretrained: Path
    lut: Path
    data_root: Path


@dataclass(frozen=True)
class Bad:
    stage: str
    says: tuple[str, ...]  # substrings of the one error line: the key or file, and the fix
    args: Callable[[Path, Files], list[str]] = lambda d, f: []  # extra CLI arguments; may write files under d
    ready: bool = False  # start from the good pretrained checkpoint and LUT


def sets(*overrides: str) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


# --- bad files, each made in the row's own folder --------------------------------------------------

def half_of(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    return write(path, data[: len(data) // 2])


def lut_changed(files: Files, path: Path, key: str, change: Callable[[dict], None]) -> Path:
    raw = json.loads(files.lut.read_text())
    change(raw[key])
    return write(path, json.dumps(raw))


def weights_file(files: Files, path: Path, how: str) -> Path:
    from netadapt_core.checkpoint import load_checkpoint

    model = load_checkpoint(files.pretrained)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "module":  # a whole pickled module, the way many training scripts save
        torch.save(model, path)
    else:  # a state dict of another width: every shape of the first layer differs
        state = model.state_dict()
        first = next(iter(state))
        state[first] = torch.zeros(state[first].shape[0] + 3, *state[first].shape[1:])
        torch.save(state, path)
    return path


def state_json(d: Path, text: str = '{"config_hash": "abc", "iterations": [') -> list[str]:
    """A run directory whose state.json was cut off mid-write (a copy from a full disk)."""
    write(d / "out" / "run" / "state.json", text)
    return []


def image_folder(d: Path, splits: tuple[str, ...] = ("train", "test"), images: bool = False) -> Path:
    """``d/images/<split>/cat/``, empty or with one real 8x8 PNG."""
    from PIL import Image

    root = d / "images"
    for split in splits:
        (root / split / "cat").mkdir(parents=True, exist_ok=True)
        if images:
            Image.new("RGB", (8, 8), (120, 60, 30)).save(root / split / "cat" / "0.png")
    return root


CUT_LUT = '{"format": "netadapt-lut/1", "entries": {'  # a LUT file cut off mid-write


def not_executable(d: Path) -> Path:
    return write(d / "device_timer.py", "print('latency_ms: 1.0')\n")  # mode 644: not executable


CASES: dict[str, Bad] = {
    # settings ------------------------------------------------------------------------------------
    "unknown key": Bad("adapt", ("adapt.budgett", "unknown key", "params.yaml"),
                       lambda d, f: sets("adapt.budgett=0.5")),
    "wrong type": Bad("lut", ("platform.threads", "valid integer", "'two'"),
                      lambda d, f: sets("platform.threads=two")),
    "out of range": Bad("lut", ("lut.channel_step", "greater than or equal to 1"),
                        lambda d, f: sets("lut.channel_step=0")),
    "renamed key model.width_mult": Bad("pretrain", ("model.width_mult", "model.kwargs.width_mult"),
                                        lambda d, f: sets("model.width_mult=0.5")),
    "unknown model": Bad("pretrain", ("model.name", "resnet9000", "tiny_cnn", "torchvision:<builder>"),
                         lambda d, f: sets("model.name=resnet9000")),
    "unknown platform": Bad("lut", ("platform.name", "'tpu'", "torch-cpu"), lambda d, f: sets("platform.name=tpu")),
    "override without =": Bad("adapt", ("adapt.budget_ratio", "section.key=value"),
                              lambda d, f: ["--set", "adapt.budget_ratio"]),
    "override without section": Bad("adapt", ("budget_ratio=0.5", "section.key"),
                                    lambda d, f: sets("budget_ratio=0.5")),
    "override value not YAML": Bad("adapt", ("adapt.exclude", "not valid YAML", "quote it"),
                                   lambda d, f: sets("adapt.exclude=[conv1, conv2")),
    "missing --params file": Bad("data", ("nope.yaml", "does not exist", "--params"),
                                 lambda d, f: ["--params", str(d / "nope.yaml")]),
    "malformed YAML file": Bad("data", ("params.yaml", "not valid YAML", "at line"),
                               lambda d, f: ["--params", str(write(d / "params.yaml", "adapt:\n  budget_ratio: [0.5\n"))]),
    "YAML file not a mapping": Bad("data", ("params.yaml", "not a mapping", "data:, model:"),
                                   lambda d, f: ["--params", str(write(d / "params.yaml", "- data\n- model\n"))]),
    "YAML section not a mapping": Bad("data", ("'adapt' is not a section", "0.5", "mapping of keys"),
                                      lambda d, f: ["--params", str(write(d / "params.yaml", "adapt: 0.5\n"))]),
    "holdout larger than the training set": Bad("data", ("data.holdout_size=70000", "60000", "Fix"),
                                                lambda d, f: sets("data.holdout_size=70000")),
    "imagefolder without a folder": Bad("data", ("data.image_folder", "imagefolder"),
                                        lambda d, f: sets("data.dataset=imagefolder")),
    "empty image folder": Bad("pretrain", ("data.image_folder", "no images", "train/<class>"),
                              lambda d, f: sets("data.dataset=imagefolder", f"data.image_folder={image_folder(d)}")),
    "image folder without test/": Bad("data", ("data.image_folder", "no test/ folder"),
                                      lambda d, f: sets("data.dataset=imagefolder",
                                                        f"data.image_folder={image_folder(d, ('train',), True)}")),
    "missing data set, download false": Bad("pretrain", ("CIFAR-10", "data.download=true"),
                                            lambda d, f: sets("data.dataset=cifar10", f"data.root={d / 'none'}")),
    "missing Fashion-MNIST": Bad("data", ("Fashion-MNIST", "data.debian_dir", "apt-get install"),
                                 lambda d, f: sets(f"data.root={d / 'none'}", f"data.debian_dir={d / 'none'}")),
    "export.formats repeat": Bad("export", ("export.formats", "twice"), lambda d, f: sets("export.formats=[onnx, onnx]")),
    "budget_ratio out of range": Bad("adapt", ("adapt.budget_ratio", "less than 1"),
                                     lambda d, f: sets("adapt.budget_ratio=1.5")),
    "unknown adapt.resource": Bad("adapt", ("adapt.resource", "'latency', 'macs' or 'params'", "flops"),
                                  lambda d, f: sets("adapt.resource=flops")),
    "unknown constraint": Bad("adapt", ("adapt.constraints.flops", "'latency', 'macs' or 'params'"),
                              lambda d, f: sets("adapt.constraints={flops: {ratio: 0.5}}")),
    "constraint repeats the primary": Bad("adapt", ("adapt.constraints.latency", "adapt.budget_ratio"),
                                          lambda d, f: sets("adapt.constraints={latency: {ratio: 0.5}}")),
    "unreachable absolute MACs budget": Bad("adapt", ("unreachable budget", "macs <= 1000", "adapt.budget"),
                                            lambda d, f: sets("adapt.resource=macs", "adapt.budget=1000"), ready=True),
    "unreachable absolute latency budget": Bad("adapt", ("unreachable budget", "latency <= 0.000 ms", "adapt.budget"),
                                               lambda d, f: sets("adapt.budget=0.0001"), ready=True),
    "unreachable parameter constraint": Bad("adapt", ("unreachable budget", "params <= 10", "constraint"),
                                            lambda d, f: sets("adapt.constraints={params: {max: 10}}"), ready=True),
    "GPU the machine lacks": Bad("pretrain", ("pretrain.device", "cuda:7"), lambda d, f: sets("pretrain.device=cuda:7")),
    "tracking server down": Bad("report", ("MLflow tracking server", "http://127.0.0.1:9", "tracking.enabled=false"),
                                lambda d, f: sets("tracking.uri=http://127.0.0.1:9")),
    # files ---------------------------------------------------------------------------------------
    "no checkpoint before adapt": Bad("adapt", ("pretrained.pt", "does not exist")),
    "corrupt checkpoint": Bad("adapt", ("bad.pt", "corrupt", "re-run the stage"),
                              lambda d, f: sets(f"pretrain.checkpoint={write(d / 'bad.pt', b'not a checkpoint')}"),
                              ready=True),
    "truncated checkpoint": Bad("adapt", ("half.pt", "corrupt", "re-run the stage"),
                                lambda d, f: sets(f"pretrain.checkpoint={half_of(f.pretrained, d / 'half.pt')}"),
                                ready=True),
    "no LUT before adapt": Bad("adapt", ("none.json", "does not exist", "netadapt lut"),
                               lambda d, f: sets(f"lut.path={d / 'none.json'}"), ready=True),
    "corrupt LUT JSON": Bad("adapt", ("lut.json", "corrupt", "netadapt lut"),
                            lambda d, f: sets(f"lut.path={write(d / 'lut.json', CUT_LUT)}"),
                            ready=True),
    "LUT of another platform": Bad("adapt", ("another platform", "other-cpu", "netadapt lut"),
                                   lambda d, f: sets("lut.path=" + str(lut_changed(
                                       f, d / "lut.json", "platform", lambda p: p.update(cpu="other-cpu")))),
                                   ready=True),
    "LUT of another network": Bad("adapt", ("built for network", "[1, 14, 14]", "netadapt lut"),
                                  lambda d, f: sets("lut.path=" + str(lut_changed(
                                      f, d / "lut.json", "network", lambda n: n.update(input_shape=[1, 14, 14])))),
                                  ready=True),
    "missing weights file": Bad("pretrain", ("nope.safetensors", "model.weights", "does not exist"),
                                lambda d, f: sets(f"model.weights={d / 'nope.safetensors'}")),
    "mismatching weights file": Bad("pretrain", ("other.pt", "does not fit", "shapes differ", "model.weights"),
                                    lambda d, f: sets(f"model.weights={weights_file(f, d / 'other.pt', 'shape')}")),
    "weights file a pickled module": Bad("pretrain", ("module.pt", "pickled", "state_dict()"),
                                         lambda d, f: sets(f"model.weights={weights_file(f, d / 'module.pt', 'module')}")),
    "truncated weights file": Bad("pretrain", ("half.pt", "cannot be read", "truncated"),
                                  lambda d, f: sets(f"model.weights={half_of(f.pretrained, d / 'half.pt')}")),
    "corrupt state.json (adapt)": Bad("adapt", ("state.json", "damaged", "move", "adapt.run_dir"),
                                      lambda d, f: state_json(d), ready=True),
    "corrupt state.json (finetune)": Bad("finetune", ("state.json", "damaged", "adapt.run_dir"),
                                         lambda d, f: state_json(d), ready=True),
    "corrupt state.json (report)": Bad("report", ("state.json", "damaged"), lambda d, f: state_json(d, "[]"),
                                       ready=True),
    "corrupt state.json (export)": Bad("export", ("state.json", "damaged"),
                                       lambda d, f: state_json(d, '{"iterations": 3}'), ready=True),
    # runners -------------------------------------------------------------------------------------
    "unknown runner": Bad("adapt", ("adapt.runner", "'threads', 'processes' or 'dask'"),
                          lambda d, f: sets("adapt.runner=ray")),
    "dask scheduler unreachable": Bad("adapt", ("adapt.dask_address", "127.0.0.1:9", "dask scheduler"),
                                      lambda d, f: sets("adapt.runner=dask", "adapt.dask_address=tcp://127.0.0.1:9"),
                                      ready=True),
    # platforms -----------------------------------------------------------------------------------
    "command platform without a command": Bad("lut", ("platform.command.argv", "examples/command_platform.yaml"),
                                              lambda d, f: sets("platform.name=command")),
    "command that does not exist": Bad("lut", ("platform.command.argv[0]", "/nonexistent/timer", "does not exist"),
                                       lambda d, f: sets("platform.name=command",
                                                         'platform.command.argv=[/nonexistent/timer, "{onnx}"]')),
    "command not on PATH": Bad("all", ("platform.command.argv[0]", "no-such-device-timer", "not a program on PATH"),
                               lambda d, f: sets("platform.name=command", 'platform.command.argv=[no-such-device-timer]')),
    "command not executable": Bad("lut", ("device_timer.py", "not executable", "chmod +x"),
                                  lambda d, f: sets("platform.name=command",
                                                    f'platform.command.argv=[{not_executable(d)}, "{{onnx}}"]')),
    # outputs that cannot be written --------------------------------------------------------------
    "checkpoint under a file": Bad("pretrain", ("pretrain.checkpoint", "a_file", "is a file, not a folder"),
                                   lambda d, f: sets(f"pretrain.checkpoint={write(d / 'a_file', 'x')}/pretrained.pt")),
    "run directory is a file": Bad("adapt", ("adapt.run_dir", "is a file", "folder"),
                                   lambda d, f: sets(f"adapt.run_dir={write(d / 'run_file', 'x')}"), ready=True),
    "report under a file": Bad("data", ("report.data", "is a file, not a folder"),
                               lambda d, f: sets(f"report.data={write(d / 'a_file', 'x')}/sub/data.json")),
    # stages out of order -------------------------------------------------------------------------
    "finetune before adapt": Bad("finetune", ("no adaptation", "netadapt adapt"), ready=True),
    "report before adapt": Bad("report", ("no adaptation", "netadapt adapt"), ready=True),
    "export before adapt": Bad("export", ("no adaptation", "netadapt adapt", "netadapt finetune"), ready=True),
    "lut --check before lut": Bad("lut", ("lut.json", "does not exist", "netadapt lut"),
                                  lambda d, f: ["--check"]),
    "adapt before pretrain": Bad("adapt", ("pretrained.pt", "does not exist", "run `netadapt pretrain` first"),
                                 lambda d, f: sets(f"lut.path={f.lut}")),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_root, pretrained, tiny_lut) -> Files:
    """The session's tiny pretrained network and its LUT (conftest), copied for this module."""
    keep = tmp_path_factory.mktemp("bad_inputs_good")
    good = Files(keep / "pretrained.pt", keep / "lut.json", data_root)
    shutil.copy(pretrained, good.pretrained)
    shutil.copy(tiny_lut, good.lut)
    return good


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_with_one_clean_line(name, tmp_path, files):
    bad = CASES[name]
    base = tiny_overrides(tmp_path, files.data_root)
    if bad.ready:
        base += [f"pretrain.checkpoint={files.pretrained}", f"lut.path={files.lut}"]
    argv = [bad.stage, *sets(*base), *bad.args(tmp_path, files)]
    before = _tree(tmp_path)
    env = {**os.environ, "NETADAPT_NO_REEXEC": "1", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=tmp_path, env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    report = f"{name}: exit {done.returncode} in {seconds:.1f}s\nstderr:\n{done.stderr[-3000:]}\nstdout:\n{done.stdout[-1000:]}"
    assert done.returncode == 2, report
    assert "Traceback" not in done.stderr, report
    assert len(lines) == 1 and lines[0].startswith(f"netadapt {bad.stage}: error: "), report
    for text in bad.says:
        assert text in lines[0], f"{text!r} not in the error line\n{report}"
    # refused before any work: nothing measured, trained or written (no checkpoint, LUT, run state,
    # nor Prefect's database: one line on stderr already says its server never started)
    assert _tree(tmp_path) == before, f"files written: {set(_tree(tmp_path)) ^ set(before)}\n{report}"
    assert seconds < REFUSAL_SECONDS, report


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """A write that fails mid-run (ENOSPC) is a NetAdaptError naming the file, and leaves no partial file."""
    import errno

    from netadapt_core.checkpoint import atomic_write_json
    from netadapt_core.errors import NetAdaptError

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "reports" / "metrics.json"
    with pytest.raises(NetAdaptError, match="metrics.json: the disk is full. Fix: free disk space"):
        atomic_write_json(target, {"a": 1})
    assert list(target.parent.iterdir()) == []


def test_multi_line_messages_become_one_line():
    from netadapt_core.config import ConfigError, load_params

    with pytest.raises(ConfigError) as err:
        load_params(None, ["adapt.budget_ratio=2", "lut.channel_step=0"])
    message = str(err.value)
    assert "\n" not in message and "adapt.budget_ratio" in message and "lut.channel_step" in message
    assert str(ConfigError("first line\n  second line")) == "first line; second line"


def test_good_inputs_pass_every_stage_check(run_params, tmp_path):
    """The checks refuse only what is wrong: the session's good settings, pretrained network, LUT and
    a well-formed run directory pass every stage's check (in-process: no Prefect, nothing trained)."""
    from netadapt_core.adapt import STATE_FILE, RunState
    from netadapt_core.checkpoint import atomic_write_json
    from netadapt_core.stages import check_inputs, load_run_state

    params = run_params()
    for stage in ("data", "pretrain", "lut", "adapt", "all"):
        check_inputs(stage, params, log=lambda _: None)
    check_inputs("lut", params, check=True)
    run_dir, tuned = Path(params.adapt.run_dir), Path(params.finetune.out_dir) / "iter_001.pt"
    for path in (run_dir / "iter_000.pt", run_dir / "iter_001.pt", tuned):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(params.pretrain.checkpoint, path)
    point = {"measured_ms": 1.0, "lut_ms": 1.0, "macs": 10, "params": 10, "holdout_accuracy": 0.5}
    state = RunState(config_hash="hash", pretrained_sha256="sha",
                     baseline={"iteration": 0, "checkpoint": str(run_dir / "iter_000.pt"), **point},
                     iterations=[{"iteration": 1, "checkpoint": str(run_dir / "iter_001.pt"), "group": "stem.0",
                                  "channels_before": 8, "channels_after": 4, "filters_removed": 4, "target": 0.9,
                                  **point}], status="done")
    state.save(run_dir)
    atomic_write_json(tuned.parent / "results.json", [{"iteration": 1, "checkpoint": str(tuned)}])
    assert load_run_state(params).iterations == state.iterations and (run_dir / STATE_FILE).is_file()
    for stage in ("finetune", "report", "export", "adapt"):
        check_inputs(stage, params, log=lambda _: None)
