"""Why LUT estimates drift on *non-uniform* networks (the ones an adaptation makes), and which
estimator model fixes it.

    .venv/bin/python benchmarks/lut_discrepancy.py --width 0.5 --step 8
    .venv/bin/python benchmarks/lut_discrepancy.py --width 1.0 --parts table fit

Builds a LUT for MobileNetV1 (1x28x28 input, stride-1 stem), then:

- ``table``: trajectory-like networks (successive single-group cuts on the LUT grid, as NetAdapt
  makes them) and random non-uniform networks (each group kept or cut to a random grid width);
  per network the LUT estimate, its layer sum, the measured latency (interleaved with the unpruned
  network, so machine drift cancels: ratio x the unpruned network's own measurement) and the error.
- ``layers``: every leaf layer timed *inside the running chain* (perf_counter between layers, many
  passes, median) against its isolated LUT entry, summed per layer kind and channel alignment.
- ``cache``: a few layers timed in a tight loop vs with a cache-flushing write between calls;
  ReLU in place vs not.
- ``fit``: estimator models fitted on one set of random non-uniform networks and checked on another
  (plus the trajectory networks), and the anchored estimate parent + k * (layer-sum difference).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netadapt_core.checkpoint import Architecture
from netadapt_core.config import load_params
from netadapt_core.layers import leaf_modules
from netadapt_core.lut import (
    LatencyEstimator,
    LatencyLUT,
    LutError,
    build_lut,
    layer_uses,
    uniform_variant,
)
from netadapt_core.platforms import ALLOCATOR_ENV, l2_cache_bytes, make_platform
from netadapt_core.surgery import prunable_groups, prune_group

INPUT_SHAPE = (1, 28, 28)
PARTS = ("table", "layers", "cache", "fit")
L2 = l2_cache_bytes()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--step", type=int, default=8, help="lut.channel_step")
    p.add_argument("--min-ratio", type=float, default=0.125, help="lut.min_channel_ratio")
    p.add_argument("--trajectories", type=int, default=2)
    p.add_argument("--cuts", type=int, nargs=2, default=[5, 15], help="min/max single-group cuts per trajectory")
    p.add_argument("--random-fit", type=int, default=10, help="random non-uniform networks to fit on")
    p.add_argument("--random-check", type=int, default=10, help="separate random networks to check on")
    p.add_argument("--network-repeats", type=int, default=21)
    p.add_argument("--chain-passes", type=int, default=400, help="passes of the in-chain layer profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--lut-cache", default="/tmp/lut_discrepancy", help="folder for built LUTs ('' = none)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p.parse_args(argv)


# ---------------------------------------------------------------- networks


def grid_options(lut, gid):
    return lut.grid[gid].widths()


def set_width(model, gid, want):
    cur = {g.id: g.channels for g in prunable_groups(model, INPUT_SHAPE)}[gid]
    if want < cur:
        prune_group(model, gid, cur - want, INPUT_SHAPE)


def trajectory(base, lut, est, rng, n_cuts, first=0.1, decay=0.96):
    """NetAdapt-like single-group cuts: cut i removes at least ``first * decay**i`` of the unpruned
    network's LUT layer sum from one random group (the widest grid width that does, else its minimum),
    so a few groups end up pruned hard and the rest untouched. Returns [(label, model)]."""
    out, model = [], base
    total = est.layer_sum_ms(base)
    for i in range(n_cuts):
        cur = {g.id: g.channels for g in prunable_groups(model, INPUT_SHAPE)}
        movable = [gid for gid in lut.grid if cur[gid] > min(grid_options(lut, gid))]
        gid = rng.choice(movable)
        lower = [c for c in grid_options(lut, gid) if c < cur[gid]]
        parent_sum, target = est.layer_sum_ms(model), first * decay ** i * total
        lo, hi, best = 0, len(lower) - 1, None  # lower is widest first; find the widest meeting target
        while lo <= hi:
            mid = (lo + hi) // 2
            child = copy.deepcopy(model)
            set_width(child, gid, lower[mid])
            if parent_sum - est.layer_sum_ms(child) >= target:
                best, hi = child, mid - 1
            else:
                lo = mid + 1
        if best is None:
            best = copy.deepcopy(model)
            set_width(best, gid, lower[-1])
        model = best.eval()
        width = {g.id: g.channels for g in prunable_groups(model, INPUT_SHAPE)}[gid]
        out.append((f"cut{i + 1}:{gid.removeprefix('features.')}->{width}", model))
    return out


def random_nonuniform(base, lut, rng):
    model = copy.deepcopy(base)
    for gid in lut.grid:
        if rng.random() < 0.5:
            set_width(model, gid, rng.choice(grid_options(lut, gid)))
    return model.eval()


# ---------------------------------------------------------------- features


def kind_of(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1:
            return "conv_dw"
        return "conv_1x1" if module.kernel_size == (1, 1) else "conv_kxk"
    if isinstance(module, nn.BatchNorm2d):
        return "bn"
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "relu"
    return "other"


KINDS = ("conv_1x1", "conv_dw", "conv_kxk", "bn", "relu", "other")


def features(lut, uses):
    f = defaultdict(float)
    for u in uses:
        f[kind_of(u.module)] += lut.entries[u.signature]["ms"]
    f["sum"] = sum(f[k] for k in KINDS)
    # weight bytes (MB) of the conv/linear layers: in a chain they stream from L3/DRAM, alone they stay hot
    f["wL2MB"] = sum(min(u.module.weight.numel() * 4, L2) for u in uses
                     if isinstance(u.module, (nn.Conv2d, nn.Linear))) / 2**20
    f["wMB"] = sum(u.module.weight.numel() * 4 for u in uses if isinstance(u.module, (nn.Conv2d, nn.Linear))) / 2**20
    f["n_ops"] = len(uses)
    return dict(f)


# ---------------------------------------------------------------- in-chain profile


def chain_profile(model, passes, warmup=20):
    """Median time of each leaf layer inside the running chain (and of the whole chain)."""
    leaves = [m for _, m in leaf_modules(model)]
    x = torch.randn(1, *INPUT_SHAPE)
    model.eval()
    times = np.zeros((passes, len(leaves)))
    pc = time.perf_counter
    with torch.inference_mode():
        ref = model(x)
        h = x
        for m in leaves:
            h = m(h)
        assert torch.allclose(h, ref, atol=1e-4), "leaf chain differs from forward()"
        for _ in range(warmup):
            model(x)
        for r in range(passes):
            h = x
            t0 = pc()
            for i, m in enumerate(leaves):
                h = m(h)
                t1 = pc()
                times[r, i] = t1 - t0
                t0 = t1
    per = np.median(times, axis=0) * 1e3
    # overhead of the perf_counter pair itself, subtracted per layer
    t = [pc() for _ in range(10001)]
    tick = statistics.median(np.diff(t)) * 1e3
    return np.maximum(per - tick, 0.0), float(np.median(times.sum(axis=1)) * 1e3), tick


def aligned(module):
    c = module.out_channels if isinstance(module, nn.Conv2d) else getattr(module, "num_features", None)
    if c is None:
        return "-"
    return "x16" if c % 16 == 0 else "x8"


def layers_part(named_models, lut, platform, passes):
    print("\n## in-chain per-layer time vs isolated LUT entry (ms, sums over the network's layers)")
    print(f"{'network':<16}{'kind':<10}{'align':<6}{'n':>4}{'lut_sum':>10}{'chain_sum':>11}{'chain/lut':>10}")
    rows = []
    for label, model in named_models:
        uses = layer_uses(model, INPUT_SHAPE, 1)
        per, total, tick = chain_profile(model, passes)
        mods = [m for _, m in leaf_modules(model)]
        assert len(mods) == len(uses)
        agg = defaultdict(lambda: [0, 0.0, 0.0])
        for u, m, t in zip(uses, mods, per):
            key = (kind_of(m), aligned(m) if kind_of(m) in ("conv_1x1", "conv_dw", "bn", "relu") else "-")
            a = agg[key]
            a[0] += 1
            a[1] += lut.entries[u.signature]["ms"]
            a[2] += t
        for (k, al), (n, ls, cs) in sorted(agg.items()):
            print(f"{label:<16}{k:<10}{al:<6}{n:>4}{ls:>10.4f}{cs:>11.4f}{cs / ls:>10.3f}")
        lsum = sum(lut.entries[u.signature]["ms"] for u in uses)
        net = platform.measure_network(model, INPUT_SHAPE).median_ms
        print(f"{label:<16}{'TOTAL':<16}{len(uses):>4}{lsum:>10.4f}{per.sum():>11.4f}{per.sum() / lsum:>10.3f}"
              f"   chain pass {total:.4f}, measured forward {net:.4f}, rest(fwd-chain) {net - per.sum():.4f},"
              f" tick {tick * 1e3:.3f} us")
        rows.append((label, lsum, per.sum(), net))
    return rows


# ---------------------------------------------------------------- cache / inplace


def cache_part(model, lut):
    print("\n## cache: layer in a tight loop vs after an 8 MiB cache-flushing write (ms/call, median)")
    uses = layer_uses(model, INPUT_SHAPE, 1)
    convs = [u for u in uses if isinstance(u.module, nn.Conv2d)]
    mid = [u for u in convs if u.module.kernel_size == (1, 1) and u.input_shape[-1] == 4]
    picks = sorted(convs, key=lambda u: -sum(p.numel() for p in u.module.parameters()))[:1] + mid[:2]
    picks += [u for u in convs if u.module.groups > 1][:1] + [u for u in convs if u.module.groups > 1][-1:]
    buf = torch.empty(2 << 20)
    print(f"{'layer':<26}{'wKB':>7}{'lut':>8}{'tight':>8}{'flushed':>9}{'ratio':>7}{'cycled':>8}{'ratio':>7}"
          "   (cycled: round-robin over weight copies filling 2x L2)")
    with torch.inference_mode():
        for u in picks:
            m = copy.deepcopy(u.module).eval()
            x = torch.randn(u.input_shape)
            for _ in range(20):
                m(x)
            tight, cold = [], []
            for _ in range(300):
                t0 = time.perf_counter()
                m(x)
                tight.append(time.perf_counter() - t0)
            for _ in range(300):
                buf.fill_(1.0)
                t0 = time.perf_counter()
                m(x)
                cold.append(time.perf_counter() - t0)
            wbytes = m.weight.numel() * 4
            copies = [copy.deepcopy(m) for _ in range(max(1, min(32, -(-2 * L2 // wbytes))))]
            cyc = []
            for i in range(300 + len(copies)):
                t0 = time.perf_counter()
                copies[i % len(copies)](x)
                cyc.append(time.perf_counter() - t0)
            t, c = statistics.median(tight) * 1e3, statistics.median(cold) * 1e3
            y = statistics.median(cyc[len(copies):]) * 1e3
            print(f"{u.name:<26}{wbytes / 1024:>7.0f}{lut.entries[u.signature]['ms']:>8.4f}{t:>8.4f}{c:>9.4f}{c / t:>7.2f}"
                  f"{y:>8.4f}{y / t:>7.2f}")
        x = torch.randn(1, 64, 28, 28)
        for mod in (nn.ReLU(inplace=True), nn.ReLU()):
            ts = []
            for _ in range(2000):
                t0 = time.perf_counter()
                mod(x)
                ts.append(time.perf_counter() - t0)
            print(f"{mod!r:<26}{'':>8}{statistics.median(ts) * 1e3:>8.4f}  (1x64x28x28)")


# ---------------------------------------------------------------- fitting


def lstsq(rows, cols, y):
    X = np.array([[r[c] if c != "1" else 1.0 for c in cols] for r in rows])
    coef, *_ = np.linalg.lstsq(X, np.array(y), rcond=None)
    return dict(zip(cols, coef))


def predict(coef, r):
    return sum(v * (r[c] if c != "1" else 1.0) for c, v in coef.items())


def errs(coef, rows, y):
    e = [abs(predict(coef, r) - m) / m for r, m in zip(rows, y)]
    return statistics.median(e), max(e)


def fit_part(lut, sets):
    fit_rows, fit_y = sets["random_fit"]
    print("\n## estimator models: fitted on random_fit, errors |est-meas|/meas (median / max)")
    models = {
        "LUT as built": {"sum": lut.scale, "1": lut.rest_ms},
        "a*sum + c (uniform fit, interl.)": lstsq(sets["uniform"][0], ["sum", "1"], sets["uniform"][1]),
        "a*sum + c (non-uniform fit)": lstsq(fit_rows, ["sum", "1"], fit_y),
        "sum + c (a=1)": {"sum": 1.0, "1": statistics.median(m - r["sum"] for r, m in zip(fit_rows, fit_y))},
        "conv/elementwise/other + c": None,
        "per-kind + c": lstsq(fit_rows, ["conv_1x1", "conv_dw", "bn", "relu", "1"], fit_y),
        "a*sum + b*weightMB + c": lstsq(fit_rows, ["sum", "wMB", "1"], fit_y),
        "sum + b*weightMB + c (a=1)": None,
        "sum + b*min(w,L2)MB + c (a=1)": None,
        "same, fitted on uniform": None,
    }
    for r in fit_rows + [r for s in sets.values() for r in s[0]]:
        r["conv"] = r.get("conv_1x1", 0) + r.get("conv_dw", 0) + r.get("conv_kxk", 0)
        r["elem"] = r.get("bn", 0) + r.get("relu", 0)
    models["conv/elementwise/other + c"] = lstsq(fit_rows, ["conv", "elem", "1"], fit_y)
    wb = lstsq([{"wMB": r["wMB"]} for r in fit_rows], ["wMB", "1"], [m - r["sum"] for r, m in zip(fit_rows, fit_y)])
    models["sum + b*weightMB + c (a=1)"] = {"sum": 1.0, **wb}
    wl = lstsq([{"wL2MB": r["wL2MB"]} for r in fit_rows], ["wL2MB", "1"], [m - r["sum"] for r, m in zip(fit_rows, fit_y)])
    models["sum + b*min(w,L2)MB + c (a=1)"] = {"sum": 1.0, **wl}
    urows, uy = sets["uniform"]
    wlu = lstsq([{"wL2MB": r["wL2MB"]} for r in urows], ["wL2MB", "1"], [m - r["sum"] for r, m in zip(urows, uy)])
    models["same, fitted on uniform"] = {"sum": 1.0, **wlu}
    wbu = lstsq([{"wMB": r["wMB"]} for r in urows], ["wMB", "1"], [m - r["sum"] for r, m in zip(urows, uy)])
    models["sum + b*wMB + c (a=1, unif. fit)"] = {"sum": 1.0, **wbu}
    names = [k for k in sets if k != "uniform"] + ["uniform"]
    print(f"{'model':<32}" + "".join(f"{n:>20}" for n in names) + "   coefficients")
    for label, coef in models.items():
        cells = "".join(f"{'%.1f%% / %.1f%%' % tuple(100 * v for v in errs(coef, *sets[n])):>20}" for n in names)
        print(f"{label:<32}{cells}   " + ", ".join(f"{k}={v:.3f}" for k, v in coef.items()))
    return models


def anchored_part(lut, trajs):
    print("\n## anchored: meas(parent) + k * (sum(child) - sum(parent)), single-group cuts")
    pairs = [[(p["sum"], c["sum"], mp, mc) for (p, mp), (c, mc) in zip(t[:-1], t[1:])] for t in trajs]
    all_pairs = [x for t in pairs for x in t]
    fit_on = pairs[0]
    num = sum((cs - ps) * (mc - mp) for ps, cs, mp, mc in fit_on)
    den = sum((cs - ps) ** 2 for ps, cs, mp, mc in fit_on)
    k_fit = num / den if den else 1.0
    check = [x for t in pairs[1:] for x in t] or all_pairs
    for label, k in (("k = lut.scale", lut.scale), ("k = 1", 1.0), ("k fitted on trajectory 1", k_fit)):
        e = [abs(mp + k * (cs - ps) - mc) / mc for ps, cs, mp, mc in check]
        print(f"{label:<28} k={k:.3f}  check trajectories: median {statistics.median(e):.2%}, max {max(e):.2%}"
              f" over {len(e)} cuts")


# ---------------------------------------------------------------- main


def get_lut(base, arch, platform, params, args):
    cache = Path(args.lut_cache) / f"mbv1_w{args.width:g}_s{args.step}_m{args.min_ratio:g}.json" if args.lut_cache else None
    if cache and cache.is_file():
        try:
            lut = LatencyLUT.load(cache)
            print(f"LUT reused from {cache}")
            return lut
        except LutError:
            pass
    t0 = time.perf_counter()
    lut = build_lut(base, arch, INPUT_SHAPE, platform, params.lut, log=lambda _: None)
    print(f"LUT built in {time.perf_counter() - t0:.0f} s")
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lut.save(cache)
    return lut


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, __file__, *argv], {**os.environ, **ALLOCATOR_ENV})
    params = load_params(None, ["platform.name=torch-cpu", "platform.threads=1",
                                f"platform.network_repeats={args.network_repeats}",
                                f"lut.channel_step={args.step}", f"lut.min_channel_ratio={args.min_ratio}",
                                *args.overrides])
    torch.set_num_threads(1)
    platform = make_platform(params.platform)
    arch = Architecture("mobilenet_v1", {"num_classes": 10, "in_channels": 1, "width_mult": args.width,
                                         "first_stride": 1, "dropout": 0.0})
    torch.manual_seed(args.seed)
    base = arch.build().eval()
    print(f"MobileNetV1 width {args.width:g}, step {args.step}, min ratio {args.min_ratio}; "
          f"load average {os.getloadavg()[0]:.2f}")
    lut = get_lut(base, arch, platform, params, args)
    print(f"LUT: {len(lut.entries)} entries, scale {lut.scale:.4f}, rest_ms {lut.rest_ms:.4f}, "
          f"calibration {lut.stats.get('calibration')}")
    est = LatencyEstimator(lut, platform, INPUT_SHAPE, measure_missing=True)
    rng = random.Random(args.seed)

    named = {"uniform": [(f"uniform_{r:g}", uniform_variant(base, INPUT_SHAPE, lut.grid, r).eval())
                         for r in (0.75, 0.5, 0.25)]}
    trajs = []
    for t in range(args.trajectories):
        trajs.append(trajectory(base, lut, est, rng, rng.randint(*args.cuts)))
        named[f"traj{t + 1}"] = trajs[-1]
    named["random_fit"] = [(f"rand_fit{i}", random_nonuniform(base, lut, rng)) for i in range(args.random_fit)]
    named["random_check"] = [(f"rand_chk{i}", random_nonuniform(base, lut, rng))
                             for i in range(args.random_check)]

    if "table" in args.parts or "fit" in args.parts:
        base_ms = min(platform.measure_network(base, INPUT_SHAPE).median_ms for _ in range(2))
        base_f = features(lut, est.uses(base))
        print(f"\n## networks (measured = interleaved ratio to the unpruned network x its own {base_ms:.4f} ms)")
        print(f"{'network':<22}{'set':<13}{'lut_est':>9}{'layersum':>10}{'measured':>10}{'ratio':>7}{'rel_err':>9}")
        print(f"{'unpruned':<22}{'-':<13}{est.estimate_ms(base):>9.4f}{est.layer_sum_ms(base):>10.4f}"
              f"{base_ms:>10.4f}{1:>7.3f}{(est.estimate_ms(base) - base_ms) / base_ms:>9.2%}")
        sets = {}
        for set_name, items in named.items():
            rows, ys = [], []
            for label, model in items:
                e, ls = est.estimate_ms(model), est.layer_sum_ms(model)
                a, b = platform.measure_networks([base, model], INPUT_SHAPE)
                ratio = b.median_ms / a.median_ms
                meas = ratio * base_ms
                rows.append(features(lut, est.uses(model)))
                ys.append(meas)
                print(f"{label:<22}{set_name:<13}{e:>9.4f}{ls:>10.4f}{meas:>10.4f}{ratio:>7.3f}"
                      f"{(e - meas) / meas:>9.2%}", flush=True)
            if set_name == "uniform":  # the unpruned network joins the uniform set
                rows, ys = [base_f] + rows, [base_ms] + ys
            sets[set_name] = (rows, ys)
        for set_name, (rows, ys) in sets.items():
            e = [(lut.scale * r["sum"] + lut.rest_ms - m) / m for r, m in zip(rows, ys)]
            print(f"  {set_name:<13} LUT error: median {statistics.median(e):+.2%}, "
                  f"min {min(e):+.2%}, max {max(e):+.2%}")
        if "fit" in args.parts:
            fit_part(lut, sets)
            anchored_part(lut, [[(base_f, base_ms)] + list(zip(*sets[f"traj{t + 1}"]))
                                for t in range(args.trajectories)])
    if "layers" in args.parts:
        pick = [("unpruned", base), named["uniform"][1], (named["traj1"][-1][0][:16], named["traj1"][-1][1]),
                named["random_fit"][0]]
        layers_part(pick, lut, platform, args.chain_passes)
    if "cache" in args.parts:
        cache_part(base, lut)
    print(f"\nload average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
