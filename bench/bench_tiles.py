"""Per-layer direct-convolution GFLOP/s of a target's register tiles, as a percent of the FMA
peak measured in the same process (same vector width, same compiler settings).

    .venv/bin/python bench/bench_tiles.py --target avx2 --avx2-only [--sets resnet18 ...]
        [--tiles auto 6x16/8 ...] [--asm] [--repeat 7]

The 3x3 and 1x1 layers (and the 7x7 stem) of ResNet-18, ResNet-50 (its 1x1s) and VGG-16 at
224x224, batch 1, on one thread (``NUMBA_NUM_THREADS=1``: this machine is shared, and one
thread's CPU time is what load on the other core disturbs least). Each layer runs the direct
kernel on packed operands (the compute kernel alone, as inside a network whose layout
transforms are fused); its time is the median CPU time of the thread (``time.thread_time``)
over ``--repeat`` calls after a warm-up, the tiles of a layer taking turns call by call.
``auto`` is the tile ``select_tile`` picks for the target; a tile such as ``6x16/8`` forces one
for every layer.

``--avx2-only`` runs the measurement in a process whose Numba generates AVX2 code only
(``NUMBA_CPU_NAME=znver3`` and the host's features without AVX-512): on an AVX-512 machine
this is a proxy for an AVX2 CPU with the same 256-bit FMA throughput (Zen 4 for Zen 3), and
the kernels and the peak loop are compiled the same way. ``--asm`` checks each kernel's
machine code: no zmm register, no ymm16-31 (AVX2 has 16), and counts the vector spills and
reloads at the stack pointer. Writes bench/results/tiles_<target>.json and prints a markdown
table.

``--networks resnet18 vgg16`` times whole networks instead (batch 1, one thread, the CPU time
of the thread per call; ``--engines cnnc onnxruntime``, each in its own process, ``--rounds``
alternating rounds): cnnc compiled for ``--target``, and ONNX Runtime on the same weights,
which picks its own instructions (AVX-512 where the CPU has it, whatever ``--avx2-only``
says). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, avx2_only_env, markdown_table, measure_peak  # noqa: E402


def _conv(k: int, c: int, hw: int, r: int = 3, s: int = 1) -> tuple[str, dict, tuple]:
    name = f"{r}x{r}{' s2' if s == 2 else ''} {c}->{k} @{hw}"
    return name, dict(out_channels=k, kernel=r, stride=s, pads=r // 2), (c, hw, hw)


#: The distinct 3x3 and 1x1 convolutions (and the stems) of each network, 224x224 inputs.
SETS: dict[str, list] = {
    "resnet18": [
        _conv(64, 3, 224, 7, 2),
        _conv(64, 64, 56), _conv(128, 64, 56, 3, 2), _conv(128, 64, 56, 1, 2),
        _conv(128, 128, 28), _conv(256, 128, 28, 3, 2), _conv(256, 128, 28, 1, 2),
        _conv(256, 256, 14), _conv(512, 256, 14, 3, 2), _conv(512, 256, 14, 1, 2),
        _conv(512, 512, 7),
    ],
    "resnet50": [
        _conv(64, 64, 56, 1), _conv(256, 64, 56, 1), _conv(64, 256, 56, 1),
        _conv(128, 256, 56, 1), _conv(512, 256, 56, 1, 2), _conv(512, 128, 28, 1),
        _conv(128, 512, 28, 1), _conv(256, 512, 28, 1), _conv(1024, 512, 28, 1, 2),
        _conv(1024, 256, 14, 1), _conv(256, 1024, 14, 1), _conv(512, 1024, 14, 1),
        _conv(2048, 1024, 14, 1, 2), _conv(2048, 512, 7, 1), _conv(512, 2048, 7, 1),
    ],
    "vgg16": [
        _conv(64, 3, 224), _conv(64, 64, 224), _conv(128, 64, 112), _conv(128, 128, 112),
        _conv(256, 128, 56), _conv(256, 256, 56), _conv(512, 256, 28), _conv(512, 512, 28),
        _conv(512, 512, 14),
    ],
}


def asm_counts(asm: str) -> dict[str, int]:
    """What the machine code uses: zmm registers, ymm16-31, FMAs, and vector moves to or from
    the stack (spills and reloads)."""
    return {
        "zmm": len(re.findall(r"%zmm\d", asm)),
        "ymm16+": len(re.findall(r"%ymm(?:1[6-9]|2\d|3[01])\b", asm)),
        "fma": len(re.findall(r"\bvfmadd\w*ps\b", asm)),
        "stack": len(re.findall(r"\bvmov\w*ps\s+(?:[^\n]*\(%rsp\)[^\n]*%[yz]mm|"
                                r"%[yz]mm\d+,\s*-?\d*\(%rsp\))", asm)),
    }


def run_layers(sets: list[str], tiles: list[str], target: str, repeat: int,
               asm: bool, only: list[str] | None = None) -> dict:
    """The measurement (in the worker process): the peak, then every layer with every tile."""
    import numba

    from cnnc.compiler.kernels.tiles import choose_tile
    from cnnc.compiler.target import resolve_target
    from cnnc.runtime.conv_kernel import compile_conv, geometry

    numba.set_num_threads(1)
    lanes = resolve_target(target).lanes
    peaks = [measure_peak(1, lanes=lanes)]
    rng = np.random.default_rng(0)
    rows = []
    for net in sets:
        for name, attrs, shape in SETS[net]:
            if only and name not in only:
                continue
            g = geometry(attrs, shape)
            x = rng.standard_normal((1, *shape)).astype(np.float32)
            w = (rng.standard_normal((g.K, g.C, g.R, g.S)) / np.sqrt(g.C * g.R * g.S)) \
                .astype(np.float32)
            runs = []
            for spec in tiles:
                tile = choose_tile(lanes, g.K // g.groups, g.Q, g.P, g.groups * g.Kgb) \
                    if spec == "auto" \
                    else spec
                k = compile_conv(attrs, shape, "direct", tile=tile)
                wp, bp = k.pack_weights(w)
                xp = k.pack_input(x)
                out = k.run(xp, wp, bp, 1)
                k.run(xp, wp, bp, 1, out)
                runs.append((k, xp, wp, bp, out, []))
            # the tiles of a layer alternate, call by call: a change of load hits them alike
            for _ in range(repeat):
                for k, xp, wp, bp, out, times in runs:
                    t0 = time.thread_time()
                    k.run(xp, wp, bp, 1, out)
                    times.append(time.thread_time() - t0)
            for k, *_, times in runs:
                sec = float(np.median(times))
                row = {"set": net, "layer": name, "tile": str(k.tile), "ms": sec * 1e3,
                       "best_ms": min(times) * 1e3, "gflops": g.flops_per_image / sec / 1e9}
                if asm:
                    row.update(asm_counts(k.inspect_asm()))
                rows.append(row)
                print(f"{net} {name} {row['tile']}: {row['ms']:.2f} ms "
                      f"{row['gflops']:.1f} GFLOP/s", file=sys.stderr, flush=True)
    peaks.append(measure_peak(1, lanes=lanes))
    return {"peak": max(peaks), "peaks": peaks, "rows": rows}


def run_network(model: str, engine: str, workdir: Path, target: str, repeat: int,
                lowering: str = "auto") -> dict:
    """One engine on one network at batch 1 on one thread (in its worker process): median CPU
    time of the thread per call, and the error against the float64 reference."""
    x = np.load(workdir / "x1.npy")
    ref = np.load(workdir / "ref1.npy")
    result: dict = {"model": model, "engine": engine}
    if engine == "cnnc":
        import numba

        from cnnc.dsl.builder import load_network
        from cnnc.runtime.model import compile as compile_model

        numba.set_num_threads(1)
        graph = load_network(model)
        m = compile_model(graph, weights=workdir / "weights.npz", target=target,
                          lowering=lowering)
        tiles = Counter(n.attrs["tile"] for n in m.plan.graph.nodes()
                        if n.op == "conv" and "tile" in n.attrs)
        result["tiles"] = dict(tiles)

        def run():
            return m(x)
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        sess = ort.InferenceSession(str(workdir / "model.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run():
            return sess.run(None, {name: x})[0]
    out = run()
    run()
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        run()
        times.append(time.thread_time() - t0)
    result.update(ms=float(np.median(times)) * 1e3, best_ms=min(times) * 1e3,
                  max_rel_err=float(np.abs(np.asarray(out, np.float64) - ref).max() /
                                    max(1.0, np.abs(ref).max())))
    return result


def networks(args, env: dict[str, str]) -> None:
    """Whole networks, batch 1, one thread, each engine in its own process, ``--rounds``
    alternating rounds (medians of the rounds' medians)."""
    import tempfile

    from cnnc.dsl.builder import load_network
    from cnnc.runtime.bench import prepare

    rows = []
    for model in args.networks:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            prepare(load_network(model), [1], workdir)
            per: dict[str, list[dict]] = {e: [] for e in args.engines}
            for _ in range(args.rounds):
                for engine in args.engines:
                    cmd = [sys.executable, __file__, "--network-worker", model, engine,
                           "--workdir", tmp, "--target", args.target,
                           "--repeat", str(args.repeat), "--lowering", args.lowering]
                    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True,
                                          check=True)
                    per[engine].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            for engine, runs in per.items():
                row = dict(runs[0], ms=float(np.median([r["ms"] for r in runs])),
                           rounds=[r["ms"] for r in runs])
                rows.append(row)
                print(f"{model} {engine}: {row['ms']:.1f} ms (rounds "
                      f"{', '.join(f'{t:.1f}' for t in row['rounds'])})", flush=True)
    print(markdown_table(["model", "engine", "ms (1 thread CPU time)", "rounds", "max rel err",
                          "conv tiles"],
                         [[r["model"], r["engine"], f"{r['ms']:.1f}",
                           " / ".join(f"{t:.1f}" for t in r["rounds"]),
                           f"{r['max_rel_err']:.1e}",
                           ", ".join(f"{t} x{n}" for t, n in sorted(r.get("tiles", {}).items()))]
                          for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--tiles", nargs="+", default=["auto"])
    ap.add_argument("--target", default="avx2")
    ap.add_argument("--avx2-only", action="store_true",
                    help="generate AVX2 code only (the Zen 3 proxy on an AVX-512 machine)")
    ap.add_argument("--asm", action="store_true", help="check each kernel's machine code")
    ap.add_argument("--layers", nargs="+", help="only these layers (names as printed)")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--networks", nargs="+",
                    help="time these whole networks instead of the layers (batch 1)")
    ap.add_argument("--engines", nargs="+", default=["cnnc", "onnxruntime"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lowering", default="auto",
                    help="cnnc's convolution lowering in --networks (auto: Winograd where the "
                         "cost model prefers it; direct: every convolution direct)")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--network-worker", nargs=2, metavar=("MODEL", "ENGINE"))
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_layers(args.sets, args.tiles, args.target, args.repeat,
                                    args.asm, args.layers)))
        return
    if args.network_worker:
        print(json.dumps(run_network(*args.network_worker, Path(args.workdir), args.target,
                                     args.repeat, args.lowering)))
        return
    env = avx2_only_env() if args.avx2_only else dict(os.environ)
    env.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if args.networks:
        networks(args, env)
        return
    cmd = [sys.executable, __file__, "--worker", "--sets", *args.sets, "--tiles", *args.tiles,
           "--target", args.target, "--repeat", str(args.repeat)] + \
        (["--asm"] if args.asm else []) + (["--layers", *args.layers] if args.layers else [])
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = res["peak"]
    for r in res["rows"]:
        r["pct_peak"] = 100 * r["gflops"] / peak
    RESULTS.mkdir(exist_ok=True)
    suffix = f"{args.target}{'_avx2only' if args.avx2_only else ''}"
    (RESULTS / f"tiles_{suffix}.json").write_text(json.dumps(res, indent=2))
    cols = ["set", "layer", "tile", "ms", "GFLOP/s", "% peak"]
    extra = ["zmm", "ymm16+", "fma", "stack"] if args.asm else []
    print(f"\n1 thread, target {args.target}{' (AVX2 code only)' if args.avx2_only else ''}; "
          f"FMA peak measured in the same process: {peak:.1f} GFLOP/s "
          f"(start {res['peaks'][0]:.1f}, end {res['peaks'][1]:.1f})")
    print(markdown_table(cols + extra, [
        [r["set"], r["layer"], r["tile"], f"{r['ms']:.2f}", f"{r['gflops']:.1f}",
         f"{r['pct_peak']:.0f}%", *(str(r[e]) for e in extra)] for r in res["rows"]]))


if __name__ == "__main__":
    main()
