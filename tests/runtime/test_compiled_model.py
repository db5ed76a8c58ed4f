"""CompiledModel: calling conventions, errors, weights, buffers, cache robustness, safety of
generated code, golden kernels and the compile/check/demo commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnc.runtime import model as model_mod
from cnnc.runtime.cli import main
from cnnc.runtime.model import CompiledModel, ModelError, cuda_sources
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import InputError, run_reference

SMALL = """
network small
input image: 3 x 12 x 10
image -> conv(8, 3, pad=1) -> batchnorm -> relu -> maxpool(2)
      -> globalavgpool -> flatten -> dense(5) -> output logits
"""

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = {
    "golden_mlp": """
network golden_mlp
input x: 4 x 6 x 6
x -> avgpool(2, pad=1, count_include_pad=false) -> relu -> flatten -> dense(10)
  -> sigmoid -> output y
""",
    "golden_branches": """
network golden_branches
input a: 3 x 5 x 5
input b: 3 x 5 x 5
s = a + b
m = a * (b -> globalmaxpool)
concat(s, m) -> upsample(2, mode=bilinear) -> softmax -> output y
""",
    # a direct convolution with a fused epilogue (folded batch norm, residual add, swish) and
    # a standalone batch norm with its activation fused
    "golden_residual": """
network golden_residual
input x: 8 x 6 x 6
y = x -> conv(8, 3, pad=1, bias=false) -> batchnorm
(y + x) -> swish -> batchnorm -> relu6 -> output out
""",
    # channel-blocked between kernels: the direct convolution applies the residual add and
    # the ReLU at its store, the max pool reads and writes NCHW8c
    "golden_blocked": """
network golden_blocked
input x: 3 x 8 x 8
s = x -> conv(16, 3, pad=1) -> relu -> maxpool(2)
y = s -> conv(16, 3, pad=1) -> relu
(s + y) -> relu -> globalavgpool -> output out
""",
}
# The same network for the 16-lane target (AVX-512) in NCHW8c: 16-lane accumulators, stored as
# two 8-channel blocks each. Every other golden pins the 8-lane target, so the files do not
# depend on the machine that regenerates them.
GOLDEN["golden_blocked_avx512"] = GOLDEN["golden_blocked"].replace(
    "golden_blocked", "golden_blocked_avx512").replace("conv(16", "conv(32")
# NCHW16c, as layout selection picks it for the 16-lane target: whole 16-lane stores of the
# direct convolution, the 16-lane depthwise kernel with swish on each vector (one vexp of 16
# lanes a pixel), the pool and the global pool over 16-channel blocks.
GOLDEN["golden_nchw16c_avx512"] = """
network golden_nchw16c_avx512
input x: 3 x 8 x 8
s = x -> conv(32, 3, pad=1) -> relu -> maxpool(2)
d = s -> conv(32, 3, pad=1, groups=32) -> swish -> conv(32, 1)
(s + d) -> relu -> globalavgpool -> output out
"""
# The same network in NHWC (asked for; never the default): the kernels step from pixel to pixel
# by the padded channel count (``xpix``, ``ypix``), a block of a pixel 8 floats on; the direct
# convolution stores a 16-lane accumulator whole (two adjacent 8-channel blocks).
GOLDEN["golden_nhwc_avx512"] = GOLDEN["golden_nchw16c_avx512"].replace(
    "golden_nchw16c_avx512", "golden_nhwc_avx512")
# Winograd, both transforms (chosen by name below): F(4x4) with the folded batch norm and the
# ReLU, F(2x2) with the residual add and the ReLU at its channel-blocked store.
GOLDEN["golden_winograd"] = """
network golden_winograd
input x: 8 x 10 x 10
y = x -> conv(16, 3, pad=1, bias=false) -> batchnorm -> relu -> conv(8, 3, pad=1)
(y + x) -> relu -> globalavgpool -> output out
"""
#: The lowering of each golden's convolutions: the direct kernel, whatever the cost model
#: prefers (their kernels are the direct ones their comments describe), but in the Winograd one.
GOLDEN_LOWERING = {"golden_winograd": {"conv1": "winograd_f4", "conv2": "winograd_f2"}}


@pytest.fixture(scope="module")
def small():
    return compile_model(SMALL, seed=1)


def test_call_forms_and_batch_sizes(small):
    rng = np.random.default_rng(0)
    for batch in (1, 9):
        x = rng.standard_normal((batch, 3, 12, 10)).astype(np.float32)
        y = small(x)
        assert isinstance(y, np.ndarray) and y.shape == (batch, 5)
        np.testing.assert_array_equal(small({"image": x}), y)
        ref = run_reference(small.graph, {"image": x}, small.params)["logits"]
        assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_several_outputs_give_a_dict():
    m = compile_model("network two\ninput x: 2 x 4 x 4\nx -> relu -> output a\n"
                      "x -> abs -> output b\n")
    out = m(np.ones((2, 2, 4, 4), np.float32))
    assert set(out) == {"a", "b"}


@pytest.mark.parametrize("bad, words", [
    (np.zeros((1, 3, 12, 11), np.float32), ["'image'", "N x 3 x 12 x 10"]),
    (np.zeros((1, 3, 12, 10), np.float64), ["'image'", "float64", "float32"]),
    (np.zeros((3, 12, 10), np.float32), ["'image'", "N x 3 x 12 x 10"]),
    ([[1.0]], ["'image'", "NumPy array"]),
])
def test_wrong_input_is_a_clear_error(small, bad, words):
    with pytest.raises(InputError) as e:
        small(bad)
    for w in words:
        assert w in str(e.value)


def test_the_one_array_call_keeps_the_checks_and_returns_copies(small, monkeypatch):
    """``model(x)`` with a float32 C-contiguous array at a batch size run before skips the
    general path (``run``) but not its checks: NaN and infinity are still refused with its
    message; any other array (strided, float64, big-endian, another shape) takes the general
    path, with its answer or its clear error. Each call returns its own array."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    want = small.run({"image": x})["logits"]  # the general path: this batch size's arena
    general = CompiledModel.run
    monkeypatch.setattr(CompiledModel, "run", lambda *a, **k: pytest.fail("general path"))
    first = small(x)
    np.testing.assert_array_equal(first, want)
    second = small(x * 2)
    assert not np.shares_memory(first, second) and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, want)  # not overwritten by the next call
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 2, 11, 9] = bad
        with pytest.raises(InputError, match="'image' contains NaN or infinity"):
            small(y)
    monkeypatch.setattr(CompiledModel, "run", general)
    np.testing.assert_array_equal(small(np.asfortranarray(x)), want)
    np.testing.assert_array_equal(small(x[:, :, :, ::-1].copy()[:, :, :, ::-1]), want)
    for bad, words in [(x.astype(np.float64), "float64"), (x.astype(">f4"), "big-endian"),
                       (x[:, :, :, :9].copy(), "N x 3 x 12 x 10")]:
        with pytest.raises(InputError, match=words):
            small(bad)


def test_wrong_input_name(small):
    with pytest.raises(InputError, match="missing 'image'.*unknown 'img'"):
        small({"img": np.zeros((1, 3, 12, 10), np.float32)})


def test_weights_roundtrip_and_update(small, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 10)).astype(np.float32)
    before = small(x)
    path = tmp_path / "w.npz"
    small.save_weights(path)
    other = compile_model(SMALL, seed=7)
    assert not np.allclose(other(x), before)
    other.load_weights(path)
    np.testing.assert_allclose(other(x), before, rtol=1e-6, atol=1e-6)
    params = other.params
    with pytest.raises(ValueError):
        params["dense1.bias"][0] = 1.0  # read-only: packed constants would go stale
    params = {k: v.copy() for k, v in params.items()}
    params["dense1.bias"] += 1.0
    other.set_params(params)
    np.testing.assert_allclose(other(x), before + 1.0, rtol=1e-5, atol=1e-5)


def test_arena_is_reused_between_calls(small):
    x = np.ones((2, 3, 12, 10), np.float32)
    a = small.run({"image": x}, copy=False)["logits"]
    b = small.run({"image": x * 2}, copy=False)["logits"]
    assert np.shares_memory(a, b)  # the same arena buffer: nothing was allocated
    c = small.run({"image": x})["logits"]
    assert not np.shares_memory(c, b)  # the default returns a copy


def test_buffers_are_reused_by_liveness():
    chain = "network chain\ninput x: 4 x 8 x 8\nx" + " -> conv(4, 3, pad=1) -> relu6" * 6 + \
        " -> output y\n"
    m = compile_model(chain)
    assert len(m.plan.buffers.slot_sizes) <= 3  # six steps, at most three live buffers
    x = np.random.default_rng(2).standard_normal((3, 4, 8, 8)).astype(np.float32)
    ref = run_reference(m.graph, {"x": x}, m.params)["y"]
    assert np.abs(m(x) - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_too_large_batch_is_refused_before_allocating(small, monkeypatch):
    monkeypatch.setattr(model_mod, "available_memory", lambda: 4096)
    assert small.bytes_needed(7) > 4096
    with pytest.raises(ModelError, match=r"batch size 7 needs .*KiB.*only 4.0 KiB"):
        small(np.zeros((7, 3, 12, 10), np.float32))
    assert 7 not in small.executor.arenas


def test_unknown_target_and_lowering():
    with pytest.raises(ModelError, match="target 'cuda'"):
        compile_model(SMALL, target="cuda")
    with pytest.raises(ModelError, match="lowering"):
        compile_model(SMALL, lowering="fft")
    with pytest.raises(ModelError, match="'nope'"):
        compile_model(SMALL, lowering={"nope": "direct"})


def test_per_layer_lowering(small):
    m = compile_model(SMALL, lowering={"conv1": "im2col"}, seed=1)
    conv = next(s for s in m.steps if s.op.startswith("conv"))
    assert conv.lowering == "im2col"
    x = np.random.default_rng(3).standard_normal((2, 3, 12, 10)).astype(np.float32)
    np.testing.assert_allclose(m(x), small(x), rtol=1e-5, atol=1e-5)


# -- generated code: safety, golden files, cache ------------------------------------------------

def _code_lines(source: str) -> list[str]:
    return [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_file_name_cannot_inject_code(tmp_path):
    evil = tmp_path / "x\nimport os\n'\"\"\"\u2028os.system('echo pwned').cnn"
    evil.write_text("network evil\ninput x: 2 x 3 x 3\nx -> relu -> maxpool(2) -> output y\n")
    m = compile_model(evil, cache_dir=tmp_path / "cache")
    src = m.plan.listing
    assert "x import os" in src  # the name is there, flattened into a comment
    for line in _code_lines(src):
        assert "os.system" not in line and "import os" not in line and "pwned" not in line
    assert "\u2028" not in src
    compile(src, "generated.py", "exec")  # still valid Python
    for line in src.splitlines():
        if "pwned" in line:
            assert line.lstrip().startswith("#")


def _golden_source(name: str) -> str:
    """The model's listing and every kernel module it runs (convolutions included)."""
    target = "avx512" if name.endswith("_avx512") else "avx2"
    layout = {"golden_blocked_avx512": "NCHW8c", "golden_nhwc_avx512": "NHWC"}.get(name, "auto")
    m = compile_model(GOLDEN[name], target=target, layout=layout,
                      lowering=GOLDEN_LOWERING.get(name, "direct"))
    if name in ("golden_nchw16c_avx512", "golden_nhwc_avx512"):
        want = "NHWC" if layout == "NHWC" else "NCHW16c"
        assert {n.attrs.get("layout") for n in m.plan.graph.nodes()} == {None, want}
    return "\n".join([m.plan.listing] + [f"# ==== {file.split('-')[0]}\n{text}" for file, text
                                          in sorted(m.plan.sources.items())])


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_generated_kernels(name):
    src = _golden_source(name)
    path = GOLDEN_DIR / f"{name}.py.txt"
    if os.environ.get("CNNC_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src, encoding="utf-8")
    assert path.is_file(), f"no golden file {path}; run with CNNC_UPDATE_GOLDEN=1"
    assert src == path.read_text(encoding="utf-8"), (
        f"generated code for {name} changed; if on purpose, regenerate with "
        "CNNC_UPDATE_GOLDEN=1")


#: The goldens whose CUDA module is kept too: pooling (average with its padding excluded, global
#: maximum), element-wise chains with broadcasting and fused activations, concatenation,
#: bilinear upsampling, softmax and a dense layer, in their GPU schedules.
CUDA_GOLDEN = ("golden_mlp", "golden_branches")


@pytest.mark.parametrize("name", CUDA_GOLDEN)
def test_golden_cuda_modules(name):
    (src,) = cuda_sources(GOLDEN[name]).values()
    path = GOLDEN_DIR / f"{name}.cu.txt"
    if os.environ.get("CNNC_UPDATE_GOLDEN") == "1":
        path.write_text(src, encoding="utf-8")
    assert path.is_file(), f"no golden file {path}; run with CNNC_UPDATE_GOLDEN=1"
    assert src == path.read_text(encoding="utf-8"), (
        f"generated CUDA for {name} changed; if on purpose, regenerate with "
        "CNNC_UPDATE_GOLDEN=1")


_RUN_CACHED = """
import sys, numpy as np
from cnnc.runtime.model import compile
m = compile(sys.argv[1], cache_dir=sys.argv[2], seed=4)
x = np.linspace(-1, 1, 2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6)
np.save(sys.argv[3], m(x))
"""


def test_corrupted_cache_entry_is_rebuilt(tmp_path):
    src = "network tiny\ninput x: 3 x 6 x 6\nx -> hard_swish -> avgpool(3, stride=1) -> output y\n"
    cache = tmp_path / "cache"

    def run(tag: str) -> np.ndarray:
        out = tmp_path / f"{tag}.npy"
        subprocess.run([sys.executable, "-c", _RUN_CACHED, src, str(cache), str(out)],
                       check=True, capture_output=True, timeout=300)
        return np.load(out)

    first = run("first")
    files = [p for p in cache.rglob("k_*.py")]  # the model's shared kernel modules
    assert len(files) == 2
    for p in files:  # truncate the kernel module and garble Numba's index and data
        p.write_text(p.read_text()[:100])
    for p in cache.rglob("*.nb[ic]"):
        if p.name.startswith("k_"):
            p.write_bytes(b"\x80\x04garbage")
    second = run("second")
    np.testing.assert_array_equal(first, second)
    m = compile_model(src, seed=4)
    x = np.linspace(-1, 1, 2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6)
    ref = run_reference(m.graph, {"x": x}, m.params)["y"]
    assert np.abs(second - ref).max() < 1e-5


# -- commands -------------------------------------------------------------------------------------

def test_cli_compile_emits_sources(tmp_path, capsys):
    f = tmp_path / "small.cnn"
    f.write_text(SMALL)
    assert main(["compile", str(f), "--emit", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "compiled" in out and "wrote" in out
    emitted = list((tmp_path / "out").glob("*.py"))
    model_src = [p for p in emitted if p.name.startswith("model_small")]
    assert model_src and len(emitted) >= 2  # the model module and the convolution's module
    text = model_src[0].read_text()
    assert "small.cnn:" in text and "maxpool1" in text  # header comments name file and layer


def test_cli_check_table_and_exit_status(tmp_path, capsys):
    f = tmp_path / "small.cnn"
    f.write_text(SMALL)
    assert main(["check", str(f), "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "conv1+batchnorm1+relu1" in out and "FAIL" not in out and "0 failed" in out
    assert "of bound" in out  # each row's error as a fraction of its float32 bound
    assert main(["check", str(f), "--tolerance", "1e-12"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["check", str(f), "--lowering", "fft"]) == 2
    assert "--lowering" in capsys.readouterr().err


def test_cli_demo_runs(tmp_path, capsys):
    f = tmp_path / "small.cnn"
    f.write_text(SMALL)
    assert main(["demo", str(f)]) == 0
    out = capsys.readouterr().out
    for words in ("compile:", "of its float32 bound", "latency, batch 1", "top-5"):
        assert words in out


def test_matches_onnxruntime_and_compiles_onnx_files(small, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from cnnc.runtime.onnx import export_onnx

    path = tmp_path / "small.onnx"
    export_onnx(small.graph, small.params, path)
    x = np.random.default_rng(5).standard_normal((3, 3, 12, 10)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.testing.assert_allclose(small(x), want, rtol=1e-4, atol=1e-4)
    from_onnx = compile_model(path)
    np.testing.assert_allclose(from_onnx(x), want, rtol=1e-4, atol=1e-4)


def test_the_memory_plan_is_in_the_last_ir_dump(tmp_path):
    """``dump_ir`` ends with the lowered graph: every computed value names its arena slot (or
    the value it is a view of), and the slots named are the plan's."""
    m = compile_model(GOLDEN["golden_residual"], dump_ir=tmp_path / "ir")
    last = sorted((tmp_path / "ir").iterdir())[-1]
    assert last.name.endswith("-memory_plan.ir")
    text = last.read_text()
    buffers = m.plan.buffers
    for step in m.plan.steps:
        line = next(x for x in text.splitlines() if x.startswith(f"  %{step.output} = "))
        root = buffers.root(step.output)
        assert f"arena slot {buffers.slot_of[root]}" in line, line
        if root != step.output:
            assert f"view of %{root}" in line, line
    sizes = text.rsplit("arena slots (floats per image) {", 1)[1].split("}")[0]
    assert [int(x.split(": ")[1]) for x in sizes.split(", ")] == buffers.slot_sizes


_ONE_KERNEL = """network one_kernel
input x: 3 x 5 x 7
x -> sigmoid -> output y
"""

_COMPILE_WITH_BAR = """
import sys
from cnnc.runtime.model import compile
compile(sys.argv[1], cache_dir=sys.argv[2], progress={progress})
print("done", flush=True)
"""


def _cold_compile_stderr(tmp_path, progress: str) -> tuple[str, str]:
    """stdout and stderr (a pipe, not a terminal) of a cold compile in a fresh process."""
    src = tmp_path / "one.cnn"
    src.write_text(_ONE_KERNEL)
    run = subprocess.run([sys.executable, "-c", _COMPILE_WITH_BAR.format(progress=progress),
                          str(src), str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return run.stdout, run.stderr


def test_a_cold_compile_draws_no_bar_where_stderr_is_not_a_terminal(tmp_path):
    """``cnnc compile --stats 2>&1 | head`` on an empty cache: the statistics, with no bar
    glued to them (a script reading them must not see carriage returns)."""
    src = tmp_path / "one.cnn"
    src.write_text(_ONE_KERNEL)
    env = {**os.environ, "CNNC_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", "import sys; from cnnc.runtime.cli import main; "
                          "sys.exit(main())", "compile", str(src), "--stats"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stdout
    assert "compiling kernels" not in run.stdout and "\r" not in run.stdout
    assert any(line.startswith("kernels per call") for line in run.stdout.splitlines()), \
        run.stdout


def test_a_bar_asked_for_follows_even_one_kernel_and_ends_its_line(tmp_path):
    """One kernel compiles in this process (no workers): the bar still counts it, reaches
    the total and ends with a newline, so nothing printed next is glued to it."""
    _, err = _cold_compile_stderr(tmp_path, "True")
    assert "compiling kernels" in err
    last = err.rstrip("\n").split("\r")[-1]
    assert "100%" in last and "1/1" in last, err
    assert err.endswith("\n")


def test_a_compiled_resnet18_dump_shows_packed_weights_and_arena_slots(tmp_path):
    """The issue's check: the lowered dump of ResNet-18 shows each convolution's packed
    weights as a parameter-time node feeding it, and each computed value's arena slot; the
    packed values are what the kernels run with (the model matches the float64 reference)."""
    from cnnc.dsl.builder import load_zoo

    graph = load_zoo("resnet18", size=32, classes=10)
    m = compile_model(graph, dump_ir=tmp_path / "ir", seed=3)
    text = sorted((tmp_path / "ir").iterdir())[-1].read_text()
    lines = {int(x.split(" = ")[0].strip()[1:]): x for x in text.splitlines()
             if x.startswith("  %")}
    convs = [n for n in m.plan.graph.compute_nodes() if n.op == "conv"]
    assert len(convs) == 20
    for conv in convs:
        packed = m.plan.graph.node(conv.inputs[-1])
        assert packed.op == "conv_pack" and conv.attrs["packed"] is True
        assert lines[packed.id].lstrip().startswith(f"%{packed.id} = conv_pack(")
        assert f"algorithm={conv.attrs['lowering']!r}" in lines[packed.id]
        assert "evaluated when parameters are set" in lines[packed.id]
        assert "arena slot" in lines[conv.id]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = run_reference(m.graph, {"image": x}, m.params)["logits"]
    np.testing.assert_allclose(m(x), want, rtol=1e-3, atol=1e-4)


_HEAD_AND_NORM = """network head_and_norm
input x: 16 x 6 x 6
x -> conv(16, 3, pad=1) -> batchnorm -> relu -> maxpool(2) -> flatten -> dense(5) -> output y
"""


@pytest.mark.parametrize("level, packings", [
    (2, {"conv_pack", "dense_pack"}),  # the batch norm folded; the head over blocked storage
    (0, {"conv_pack", "bn_scale_shift"}),  # the batch norm standalone; everything plain
])
def test_every_packing_is_a_parameter_time_node_its_kernel_checks(level, packings):
    m = compile_model(_HEAD_AND_NORM, opt_level=level, seed=2)
    graph = m.plan.graph
    made = {graph.node(n.inputs[-1]).op for n in graph.compute_nodes() if n.attrs.get("packed")}
    assert made == packings
    assert {graph.node(i).op for i in m.plan.param_nodes} >= packings
    x = np.random.default_rng(1).standard_normal((3, 16, 6, 6)).astype(np.float32)
    want = run_reference(m.graph, {"x": x}, m.params)["y"]
    np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-5)


def test_a_packing_made_for_another_kernel_is_refused():
    """The lowering reads the packing's attributes: weights packed for another register tile
    (or algorithm, or block width) would be read in the wrong order, so they are refused."""
    from cnnc.compiler.lower import lower_graph
    from cnnc.compiler.ops import LoweringError
    from cnnc.compiler.passes import optimize
    from cnnc.dsl.builder import load_network

    graph = load_network(_HEAD_AND_NORM)
    optimize(graph, 0)
    pack = next(n for n in graph.nodes() if n.op == "conv_pack")
    pack.attrs["kernel_tile"] = "4x16/8"
    with pytest.raises(LoweringError, match="packed for"):
        lower_graph(graph)
