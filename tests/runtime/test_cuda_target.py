"""The CUDA targets as a user meets them: ``cuda`` without a GPU (one sentence), ``cuda-emu``
(the same CUDA source on the CPU), and the CLI writing the CUDA module without a GPU."""

from __future__ import annotations

import re
import sys
import types
from functools import partial

import numpy as np
import pytest

from cnnc.compiler.backends.cuda import loader, nvrtc
from cnnc.compiler.backends.cuda.emulate import ORDERS, EmulatedModule, compiler_path
from cnnc.compiler.backends.cuda.launch import Launcher
from cnnc.compiler.backends.cuda.memory import EmulatedArray, EmulatedMemory
from cnnc.compiler.backends.cuda.nvrtc import nvcc_path
from cnnc.compiler.decisions import own_attrs
from cnnc.compiler.kernels.gpu_conv import DEFAULT_TILE, TILE_K, GemmTile, choose_gemm_tile
from cnnc.compiler.kernels.kernel_ir import Barrier, Kernel, Param
from cnnc.dsl.builder import load_network
from cnnc.runtime.check import check_model
from cnnc.runtime.cli import main
from cnnc.runtime.model import ModelError, NumericsError
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import InputError, run_reference
from cnnc.runtime.weights import init_params

SMALL = """
network small
input image: 3 x 12 x 10
image -> conv(8, 3, pad=1) -> batchnorm -> relu -> maxpool(2)
      -> conv(16, 3, pad=1, stride=2) -> relu
      -> globalavgpool -> flatten -> dense(5) -> output logits
"""

needs_cxx = pytest.mark.skipif(compiler_path() is None, reason="no C++ compiler (g++/clang++)")


def test_cuda_without_a_gpu_says_what_it_looked_for_in_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if CuPy were not installed
    with pytest.raises(ModelError) as e:
        compile_model(SMALL, target="cuda")
    message = str(e.value)
    assert "\n" not in message and message.count(". ") == 0
    assert "looked for CuPy" in message and "not installed" in message and "cuda-emu" in message

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=no_device)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    problem = loader.gpu_problem()
    assert "looked for an NVIDIA GPU" in problem and "no CUDA-capable device" in problem


@needs_cxx
def test_cuda_emu_runs_the_cuda_module_in_every_thread_order(tmp_path):
    model = compile_model(SMALL, target="cuda-emu", cache_dir=tmp_path, seed=3)
    assert model.plan.listing_file == "model_small.cu"
    assert "__global__" in model.sources()["model_small.cu"]
    launchers = [c.fn for s in model.steps for c in s.calls]
    assert launchers and all(isinstance(f, Launcher) for f in launchers)
    module = launchers[0].module()
    x = np.random.default_rng(4).standard_normal((3, 3, 12, 10)).astype(np.float32)
    ref = run_reference(model.graph, {"image": x}, model.params)["logits"]
    outs = {}
    for order in ORDERS:
        module.order = order
        outs[order] = model(x)
    assert np.abs(outs["forward"] - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    for order in ORDERS[1:]:
        np.testing.assert_array_equal(outs[order], outs["forward"])


def test_cli_writes_the_cuda_module_without_a_gpu(tmp_path, capsys):
    model = tmp_path / "small.cnn"
    model.write_text(SMALL)
    out = tmp_path / "cu"
    assert main(["compile", str(model), "--target", "cuda", "--emit", str(out)]) == 0
    source = (out / "model_small.cu").read_text()
    assert "small.cnn:5" in source and 'extern "C" __global__' in source
    assert "printed" in capsys.readouterr().out
    assert main(["compile", str(model), "--target", "cuda", "--emit", str(out)]) != 0
    assert "--force" in capsys.readouterr().err
    assert (out / "model_small.cu").read_text() == source


@needs_cxx
def test_cli_checks_every_cuda_kernel_under_emulation(tmp_path, capsys):
    model = tmp_path / "small.cnn"
    model.write_text(SMALL)
    assert main(["check", str(model), "--target", "cuda-emu"]) == 0
    assert "0 failed" in capsys.readouterr().out


def emulated_cupy(root) -> types.SimpleNamespace:
    """A stand-in for the part of CuPy's API the ``cuda`` target uses (arrays: ``ndarray``,
    ``zeros``, ``empty``, ``asarray`` (of the array's shape), ``asnumpy``, slicing,
    ``reshape``, ``copy``, ``set``, ``copyto``; ``RawModule(code=...)`` and its functions
    called as ``fn(grid, block, args)`` with device arrays and NumPy scalars; streams, their
    events and graph capture; the device count and free memory), with a GPU emulated on the
    CPU underneath: the module's source is compiled as the
    ``cuda-emu`` target compiles it, its kernels' parameters read from their printed
    signatures (and whether their threads meet at barriers, from their bodies)."""
    memory = EmulatedMemory()

    def kind(param: str) -> str:
        """A parameter's kind from its printed declaration."""
        if param.startswith(("int ", "float ")):
            return param.split()[0]
        return "int_array" if "long long*" in param else "array"

    class RawModule:
        def __init__(self, code: str, options: tuple[str, ...] = ()) -> None:
            self.kernels = {}
            for name, params, body in re.findall(
                    r'extern "C" __global__ void (\w+)\(([^)]*)\) \{(.*?)\n\}', code, re.S):
                self.kernels[name] = Kernel(name, [
                    Param(p.split()[-1], kind(p)) for p in params.split(", ")],
                    [Barrier()] if "__syncthreads" in body else [])  # threads that meet
            self.module = EmulatedModule(code, list(self.kernels.values()), root)

        def get_function(self, name: str):
            kernel = self.kernels[name]

            def launch(grid, block, args):
                assert all(isinstance(a, (EmulatedArray, np.int32, np.float32)) for a in args)
                run = partial(self.module.launch, name, grid[0], block[0], kernel, tuple(args))
                stream = streams[-1]
                if stream.captured is not None:  # captured into a graph, not run
                    stream.captured.append(run)
                else:
                    launched.append(name)
                    run()
            return launch

    class Stream:
        """A stream: ``with`` makes it current; a capture collects its launches."""

        def __init__(self, non_blocking: bool = False) -> None:
            self.captured: list | None = None

        def __enter__(self):
            streams.append(self)
            return self

        def __exit__(self, *exc) -> None:
            streams.pop()

        def begin_capture(self) -> None:
            assert self is not streams[0], "no capture on the null stream"
            self.captured = []

        def end_capture(self):
            graph, self.captured = Graph(self.captured), None
            return graph

        def record(self):
            return object()  # an event

        def wait_event(self, event) -> None:
            pass  # launches run in order here

    class Graph:
        def __init__(self, launches: list) -> None:
            self.launches = launches

        def launch(self, stream) -> None:
            replays.append(len(self.launches))
            for run in self.launches:
                run()

    streams = [Stream()]  # the null stream
    launched: list[str] = []  # kernels launched one by one
    replays: list[int] = []  # graphs launched: their kernel counts

    def asarray(a):
        if isinstance(a, EmulatedArray):
            return a
        return memory.upload(a).reshape(np.shape(a))

    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                    memGetInfo=lambda: (1 << 34, 1 << 35))
    return types.SimpleNamespace(
        zeros=lambda n, dtype: memory.zeros(n), empty=lambda n, dtype: memory.empty(n),
        asarray=asarray, asnumpy=memory.download, int32=np.int32, ndarray=EmulatedArray,
        copyto=lambda dst, src: dst.fill_from(src), RawModule=RawModule,
        cuda=types.SimpleNamespace(runtime=runtime, Stream=Stream,
                                   get_current_stream=lambda: streams[-1]),
        launched=launched, replays=replays)


@needs_cxx
def test_cuda_target_runs_through_cupy_on_an_emulated_gpu(tmp_path, monkeypatch):
    """``target="cuda"`` with CuPy present: parameters, arena and inputs on the device,
    every kernel launched through CuPy's module, outputs downloaded; the numbers are the
    reference's, at two batch sizes, and an overflow is found and named on the device too."""
    monkeypatch.setitem(sys.modules, "cupy", emulated_cupy(tmp_path))
    model = compile_model(SMALL, target="cuda", cache_dir=tmp_path, seed=5)
    arena = model.executor.arena(1)
    assert all(isinstance(b, EmulatedArray) for b in arena.slots)
    rng = np.random.default_rng(6)
    for n in (1, 4):
        x = rng.standard_normal((n, 3, 12, 10)).astype(np.float32)
        ref = run_reference(model.graph, {"image": x}, model.params)["logits"]
        got = model(x)
        assert type(got) is np.ndarray and got.shape == (n, 5)
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    x[:] = 3e38  # the first convolution overflows float32
    with pytest.raises(NumericsError) as e:
        model.run({"image": x}, check_numerics=True)
    assert e.value.inf > 0 and "layer conv1" in str(e.value)


@needs_cxx
def test_calls_from_the_third_on_replay_one_captured_graph(tmp_path, monkeypatch):
    """The first call at a batch size launches kernel by kernel, the second captures its
    launches into a CUDA graph (on a stream of its own, not the null stream) reading the
    input from the arena's own buffer, and every later call copies its input there and
    launches the graph alone: each call's output is still its own input's (a replay that
    read the captured call's input would give the second call's logits), NumPy and CuPy
    inputs alike; new weights have the next call capture again with them."""
    cupy = emulated_cupy(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    model = compile_model(SMALL, target="cuda", cache_dir=tmp_path, seed=5)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((2, 3, 12, 10)).astype(np.float32) for _ in range(5)]

    def check(x, params, on_device: bool) -> None:
        ref = run_reference(model.graph, {"image": x}, params)["logits"]
        got = model(cupy.asarray(x)) if on_device else model(x)
        got = cupy.asnumpy(got) if on_device else got
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())

    params = model.params
    before = len(cupy.launched)  # the compile's own first call, at batch 1
    check(xs[0], params, False)
    launched = len(cupy.launched)
    kernels = launched - before
    assert kernels >= 5 and not cupy.replays  # one by one
    check(xs[1], params, True)  # captured, then replayed
    assert len(cupy.launched) == launched and cupy.replays == [kernels]
    check(xs[2], params, False)
    check(xs[3], params, True)
    assert len(cupy.launched) == launched and cupy.replays == [kernels] * 3
    params = {k: v * np.float32(0.5) for k, v in params.items()}
    model.set_params(params)
    check(xs[4], params, False)
    assert len(cupy.launched) == launched and cupy.replays == [kernels] * 4


SHAPES = """
network shapes
input image: 6 x 11 x 9
c1 = image -> conv(12, 3, pad=1, groups=3) -> relu
c2 = c1 -> conv(12, 3, pad=2, dilation=2)
c1 + c2 -> relu -> conv(12, 3, pad=1, groups=12) -> conv_transpose(5, 3, stride=2, pad=1)
      -> conv(7, (1, 3), stride=(2, 1), pad=(0, 1, 1, 0)) -> output y
"""


@needs_cxx
@pytest.mark.parametrize("opt_level", (0, 2))
def test_gpu_convolutions_check_every_step_under_emulation(tmp_path, opt_level):
    """On a GPU target every convolution (grouped, dilated, depthwise, transposed,
    asymmetric padding and stride; with a residual add fused or not) is a GPU algorithm: the
    implicit GEMM (at -O0 every layer; at -O2 every layer of 5 or more output channels a
    group), or at -O2 a thread per output value for the depthwise layer (one output channel a
    group: a GEMM tile of 32 rows would compute 31 of padding); every step is within its
    error bound of the float64 reference."""
    model = compile_model(SHAPES, target="cuda-emu", cache_dir=tmp_path, seed=2,
                          opt_level=opt_level)
    graph = model.plan.graph
    convs = [s for s in model.plan.steps if graph.node(s.node).op in ("conv", "conv_transpose")]
    assert len(convs) >= 4
    per_group = {s.node: own_attrs(graph.node(s.node).attrs)["out_channels"]
                 // own_attrs(graph.node(s.node).attrs)["groups"] for s in convs}
    assert min(per_group.values()) == 1  # the depthwise layer
    for s in convs:
        if opt_level == 0 or per_group[s.node] >= 5:
            assert s.lowering == "implicit_gemm", s.name
        elif per_group[s.node] == 1:
            assert s.lowering == "gpu_direct", s.name
    # each layer's tile recorded in the IR (select_tile) and its kernel in the module
    source = model.plan.listing
    tiles = set()
    for node in model.plan.graph.nodes():
        if node.attrs.get("lowering") == "implicit_gemm" and node.op != "conv_weight_grad":
            groups = own_attrs(node.attrs)["groups"]
            tile = choose_gemm_tile(own_attrs(node.attrs)["out_channels"] // groups,
                                    node.type.shape[1] * node.type.shape[2])
            assert node.attrs["tile"] == str(tile)
            tiles.add(tile)
            name = "conv_implicit_gemm" + ("" if tile == DEFAULT_TILE else f"_{tile}")
            assert f"void {name}(" in source
    assert tiles and DEFAULT_TILE not in tiles  # 5 to 12 output channels: 32 rows
    rows = check_model(model, batch=2)
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]


def test_gpu_algorithms_are_refused_on_a_cpu(tmp_path):
    with pytest.raises(ModelError, match="GPU targets only"):
        compile_model(SMALL, lowering="implicit_gemm", cache_dir=tmp_path, warm=False)


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed on this machine")
def test_cli_reports_each_cuda_kernels_resources(tmp_path, capsys):
    model = tmp_path / "small.cnn"
    model.write_text(SMALL)
    assert main(["compile", str(model), "--target", "cuda", "--resources", "--arch",
                 "sm_90"]) == 0
    out = capsys.readouterr().out
    assert "resources for sm_90" in out
    row = next(line.split() for line in out.splitlines() if "conv_implicit_gemm" in line)
    suffix = row[0][len("conv_implicit_gemm_"):]  # the layer's tile, if not 64 x 64
    tile = GemmTile.parse(suffix) if suffix else DEFAULT_TILE
    assert int(row[2]) == 4 * TILE_K * (tile.m + tile.n)  # shared bytes: its two tiles


def test_cli_resources_without_nvcc_says_what_it_needs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nvrtc, "nvcc_path", lambda: None)
    model = tmp_path / "small.cnn"
    model.write_text(SMALL)
    assert main(["compile", str(model), "--target", "cuda", "--resources"]) != 0
    err = capsys.readouterr().err
    assert "nvcc" in err and "Traceback" not in err


@needs_cxx
def test_cli_runs_a_model_on_the_emulated_gpu(tmp_path, capsys):
    model = tmp_path / "small.cnn"
    model.write_text(SMALL)
    x = np.random.default_rng(7).standard_normal((2, 3, 12, 10)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(model), "--input", str(tmp_path / "x.npy"), "--target", "cuda-emu",
                 "-o", str(tmp_path / "out.npz")]) == 0
    assert "compiled (CUDA emulated on the CPU)" in capsys.readouterr().out
    ref = run_reference(load_network(str(model)), {"image": x},
                        init_params(load_network(str(model)), 0))["logits"]
    got = np.load(tmp_path / "out.npz")["logits"]
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@needs_cxx
def test_cuda_target_takes_cupy_arrays_and_returns_them(tmp_path, monkeypatch):
    """A CuPy input is read where it lies (nothing is uploaded at the call), and the outputs
    come back as CuPy arrays of their shape (copies: the next call leaves them as they are),
    equal to the NumPy call's; a CuPy input of the wrong shape is refused as a NumPy one is."""
    cupy = emulated_cupy(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    model = compile_model(SMALL, target="cuda", cache_dir=tmp_path, seed=5)
    x = np.random.default_rng(8).standard_normal((2, 3, 12, 10)).astype(np.float32)
    want = model(x)
    uploads = []
    memory = model.executor.memory
    monkeypatch.setattr(memory, "upload", lambda a: uploads.append(a) or cupy.asarray(a))
    got = model(cupy.asarray(x))
    assert isinstance(got, EmulatedArray) and got.shape == (2, 5) and not uploads
    np.testing.assert_array_equal(cupy.asnumpy(got), want)
    model(cupy.asarray(np.zeros_like(x)))
    np.testing.assert_array_equal(cupy.asnumpy(got), want)  # a copy, not the arena
    with pytest.raises(InputError, match="has shape 2 x 3 x 10 x 12"):
        model(cupy.asarray(x.transpose(0, 1, 3, 2).copy()))
    with pytest.raises(InputError, match="NumPy or CuPy array"):
        model([1.0])


TRAIN_SMALL = """
network small_train
input image: 3 x 8 x 8
image -> conv(4, 3, pad=1) -> batchnorm -> relu -> dropout(0.25) -> maxpool(2)
      -> flatten -> dense(3) -> output logits
"""


@needs_cxx
def test_training_on_the_cuda_target_through_cupy(tmp_path, monkeypatch):
    """``mode="train"`` on ``target="cuda"``: every kernel (forward, backward with dropout's
    int64 seed, Adam's update with its float arguments) launched through CuPy's module; CuPy
    images and labels give the NumPy ones' loss and gradients bit for bit, as host arrays,
    and train steps on the device give the same losses both ways."""
    cupy = emulated_cupy(tmp_path)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    options = dict(mode="train", target="cuda", cache_dir=tmp_path, seed=1,
                   loss="cross_entropy", optimizer="adam", lr=0.01)
    tm = compile_model(TRAIN_SMALL, **options)
    assert isinstance(tm.flat_params, EmulatedArray)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    loss, grads = tm.loss_and_grads(x, y)
    loss_dev, grads_dev = tm.loss_and_grads(cupy.asarray(x), cupy.asarray(y))
    assert loss_dev == loss
    for name, g in grads.items():
        assert type(grads_dev[name]) is np.ndarray
        np.testing.assert_array_equal(grads_dev[name], g, err_msg=name)
    again = compile_model(TRAIN_SMALL, **options)
    for _ in range(3):
        assert tm.train_step(cupy.asarray(x), cupy.asarray(y)) == again.train_step(x, y)
    for name, v in tm.params.items():
        np.testing.assert_array_equal(v, again.params[name], err_msg=name)
