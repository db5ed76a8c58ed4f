"""Fuzzing ONNX import: mutated models (protobuf fields, dims, initializers, opsets, attribute
values, dropped inputs and nodes, raw bytes) made from exported zoo networks and a PyTorch-style
graph. Every mutant must be answered with a clean user error (the types `cnnc`'s command line
reports as errors, OnnxImportError first) or a network that builds with its weights; where ONNX
Runtime also accepts the mutant, the two must compute the same numbers. The work is bounded by
the seeds' sizes, the DSL's limits and the count of mutants (the comparison runs only networks
of at most 2^20 values a tensor); no test asserts how fast a mutant is answered, a generous
alarm only turns a hang into a failure.

The short run (in the suite) tries SHORT mutants; `CNNC_FUZZ_LONG=1` tries LONG (or
`CNNC_FUZZ_COUNT`, from mutant `CNNC_FUZZ_START`). Mutant k is reproducible:
`mutate(seed_models()[k % len(seed_models())], k)`.
"""

from __future__ import annotations

import os
import random
import signal
import traceback
from collections import Counter
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnnc.dsl.builder import load_network, load_zoo  # noqa: E402
from cnnc.runtime.cli import main, user_errors  # noqa: E402
from cnnc.runtime.onnx import export_onnx, import_onnx  # noqa: E402
from cnnc.runtime.reference import run_reference  # noqa: E402
from cnnc.runtime.weights import init_params  # noqa: E402

SHORT, LONG = 250, 6000
HANG_S = 120.0  # per mutant, hang protection only (each answers in about a second or less)
CLEAN = user_errors()

# Zoo networks at reduced sizes (the export tests' shapes): small enough to run.
ZOO = [("lenet5", {}), ("resnet18", {"classes": 10, "size": 32}),
       ("mobilenet_v2", {"classes": 10, "size": 32}), ("squeezenet1_1", {"classes": 10,
                                                                       "size": 48}),
       ("siamese", {"embedding": 16, "size": 32, "width": 8}),
       ("googlenet_bn", {"classes": 10, "size": 32})]


def _pytorch_style() -> Any:
    """A graph as PyTorch's exporters write one: Shape arithmetic feeding Pad, Resize and a
    Reshape, constants per channel, ReduceMean as global pooling, Gemm."""
    rng = np.random.default_rng(0)
    f = np.float32
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(f), "b": rng.standard_normal(4)
             .astype(f), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "scales": np.array([1, 1, 2, 2], f), "axes": np.array([2, 3], np.int64),
             "fw": rng.standard_normal((5, 4)).astype(f), "fb": rng.standard_normal(5).astype(f),
             "c": rng.standard_normal((4, 1, 1)).astype(f), "zero": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64)}
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
        helper.make_node("Conv", ["p", "w", "b"], ["c1"], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r"]),
        helper.make_node("Mul", ["r", "c"], ["m"]),
        helper.make_node("Resize", ["m", "", "scales"], ["u"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("MaxPool", ["u"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ReduceMean", ["mp", "axes"], ["g"], keepdims=1),
        helper.make_node("Shape", ["g"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["g", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"], transB=1),
        helper.make_node("Softmax", ["y"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "torchish", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["N", 3, 9, 9])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


_SEEDS: list[bytes] = []


def seed_models() -> list[bytes]:
    """The unmutated models, serialized (each imports cleanly)."""
    if not _SEEDS:
        for name, over in ZOO:
            graph = load_zoo(name, **over)
            _SEEDS.append(export_onnx(graph, init_params(graph, 1)).SerializeToString())
        _SEEDS.append(_pytorch_style().SerializeToString())
    return _SEEDS


# -- mutations --------------------------------------------------------------------------------

INTS = [0, 1, 2, 3, -1, -2, 7, 1 << 31, -(1 << 40), 1 << 62]
FLOATS = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 0.5]
OPS = ["Relu", "Conv", "MaxPool", "Add", "Concat", "Reshape", "Gemm", "Sin", "Transpose",
       "Resize", "Pad", "Flatten", "Softmax", "BatchNormalization", "Mul", "ReduceMean", "Sum",
       "ConstantOfShape", "Squeeze", "Identity", "Clip", "Gelu"]


def _mutate_attribute(m: Any, rng: random.Random) -> str:
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return "no attributes"
    n = rng.choice(nodes)
    a = rng.choice(list(n.attribute))
    choice = rng.random()
    if choice < 0.15:
        n.attribute.remove(a)
        return f"dropped attribute {a.name} of {n.op_type}"
    if a.type == onnx.AttributeProto.INTS and a.ints:
        k = rng.randrange(len(a.ints))
        if choice < 0.3:
            del a.ints[k]
        elif choice < 0.4:
            a.ints.append(rng.choice(INTS))
        else:
            a.ints[k] = rng.choice(INTS)
    elif a.type == onnx.AttributeProto.INT:
        a.i = rng.choice(INTS)
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = rng.choice(FLOATS)
    elif a.type == onnx.AttributeProto.STRING:
        a.s = rng.choice([b"", b"SAME_UPPER", b"VALID", b"reflect", b"edge", b"linear",
                          b"cubic", b"tanh", b"\xff\xfe", b"align_corners"])
    elif a.type == onnx.AttributeProto.TENSOR:
        a.t.dims.append(rng.choice(INTS[:7]))
    else:
        a.type = rng.choice([onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING])
    return f"attribute {a.name} of {n.op_type}"


def _mutate_dims(m: Any, rng: random.Random) -> str:
    values = list(m.graph.input) + list(m.graph.output)
    if not values:
        return "no inputs or outputs"
    v = rng.choice(values)
    dims = v.type.tensor_type.shape.dim
    if not dims or rng.random() < 0.15:
        dims.add().dim_value = rng.choice([1, 3])
        return f"added a dim to {v.name}"
    d = rng.choice(list(dims))
    r = rng.random()
    if r < 0.3:
        d.dim_param = rng.choice(["N", "batch", "H"])
    elif r < 0.4 and len(dims) > 1:
        del dims[rng.randrange(len(dims))]
    else:
        d.dim_value = rng.choice([0, 1, 2, 5, 1 << 20, 1 << 40])
    return f"dims of {v.name}"


def _mutate_initializer(m: Any, rng: random.Random) -> str:
    if not m.graph.initializer:
        return "no initializers"
    t = rng.choice(list(m.graph.initializer))
    r = rng.random()
    if r < 0.2 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2, 3, 1 << 33])
    elif r < 0.3:
        t.dims.append(rng.choice([1, 2]))
    elif r < 0.45 and t.raw_data:
        t.raw_data = t.raw_data + b"\0" * rng.choice([1, 4, 8, 64])
    elif r < 0.55 and t.raw_data:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    elif r < 0.7:
        t.data_type = rng.choice([TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                  TensorProto.BOOL, TensorProto.STRING, TensorProto.UINT8,
                                  TensorProto.BFLOAT16, 99])
    elif r < 0.8:
        m.graph.initializer.remove(t)
    elif r < 0.9 and t.raw_data:
        data = bytearray(t.raw_data)
        for _ in range(4):
            data[rng.randrange(len(data))] = 0xFF  # NaN payloads, huge values
        t.raw_data = bytes(data)
    else:
        t.name = rng.choice(["", "x"] + [o for n in m.graph.node[:1] for o in n.output])
    return f"initializer {t.name}"


def _mutate_opset(m: Any, rng: random.Random) -> str:
    r = rng.random()
    if not m.opset_import:
        m.opset_import.add(domain="", version=rng.choice([1, 13, 21]))
    elif r < 0.7:
        m.opset_import[0].version = rng.choice([1, 3, 5, 6, 7, 9, 10, 11, 12, 13, 17, 18, 21,
                                                22, 25, onnx.defs.onnx_opset_version(), 99])
    elif r < 0.8:
        del m.opset_import[:]
    elif r < 0.9:
        m.opset_import.add(domain="com.example", version=1)
    else:
        m.ir_version = rng.choice([1, 3, 4, 7, 13, 99])
    return "opset"


def _mutate_graph(m: Any, rng: random.Random) -> str:
    g = m.graph
    if not g.node:
        return "no nodes"
    n = rng.choice(list(g.node))
    r = rng.random()
    if r < 0.3 and n.input:
        k = rng.randrange(len(n.input))
        if rng.random() < 0.5:
            n.input[k] = ""
        else:
            del n.input[k]
        return f"dropped input {k} of {n.op_type}"
    if r < 0.45:
        g.node.remove(n)
        return f"dropped node {n.op_type}"
    if r < 0.65:
        old = n.op_type
        n.op_type = rng.choice(OPS)
        return f"op {old} -> {n.op_type}"
    if r < 0.75 and n.input:
        n.input[rng.randrange(len(n.input))] = rng.choice(
            [o for nn in g.node for o in nn.output] + ["nowhere"])
        return f"rewired {n.op_type}"
    if r < 0.85:
        n.output[0] = rng.choice([i.name for i in g.input] + ["y2"])
        return f"renamed output of {n.op_type}"
    if r < 0.95:
        n.domain = rng.choice(["com.microsoft", "ai.onnx.ml", "ai.onnx"])
        return "domain"
    a = n.attribute.add()
    a.CopyFrom(helper.make_attribute(rng.choice(["group", "axis", "pads", "bogus"]),
                                     rng.choice([0, 2, [1, 1]])))
    return f"added attribute to {n.op_type}"


def _mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    for _ in range(rng.choice([1, 2, 8]) if b else 0):
        b[rng.randrange(len(b))] = rng.randrange(256)
    if rng.random() < 0.2 and b:
        b = b[: rng.randrange(len(b))]
    return bytes(b), "bytes"


MUTATORS = [_mutate_attribute, _mutate_attribute, _mutate_dims, _mutate_initializer,
            _mutate_initializer, _mutate_opset, _mutate_graph, _mutate_graph]


def mutate(seed: bytes, k: int) -> tuple[bytes, str]:
    """Mutant k of a seed model: one to three mutations (or damaged bytes)."""
    rng = random.Random(k)
    if rng.random() < 0.1:
        return _mutate_bytes(seed, rng)
    m = onnx.ModelProto()
    m.ParseFromString(seed)
    what = [rng.choice(MUTATORS)(m, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
    return m.SerializeToString(), "; ".join(what)


# -- the oracle -------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def _compare_with_ort(data: bytes, text: str, weights: dict[str, np.ndarray]) -> str | None:
    """Where ONNX Runtime runs the mutant too: the outputs must agree. None when they do (or
    ORT refuses it), else a description."""
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ORT refuses it: nothing to compare with
        return None
    graph = load_network(text)
    sizes = [int(np.prod(n.type.shape)) for n in graph.topo_order() if n.op != "param"]
    if max(sizes) > 1 << 20 or sum(sizes) > 1 << 23:
        return None  # too large to run here (the import itself was checked)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((1,) + graph.node(v).type.shape).astype(np.float32)
             for k, v in graph.inputs.items()}
    try:
        theirs = session.run(None, dict(zip([i.name for i in session.get_inputs()],
                                            feeds.values())))
    except Exception:  # noqa: BLE001 - ORT cannot run it (shape errors at run time)
        return None
    ours = list(run_reference(graph, feeds, weights).values())
    if any(not np.all(np.isfinite(b)) or np.max(np.abs(a), initial=0.0) > 1e30
           for a, b in zip(ours, theirs)):
        return None  # float32 overflow in ONNX Runtime, not in the float64 reference
    if len(ours) != len(theirs):
        return f"{len(ours)} outputs, ONNX Runtime has {len(theirs)}"
    for k, (a, b) in enumerate(zip(ours, theirs)):
        b = np.asarray(b, np.float64)
        if a.shape != b.shape:
            return f"output {k}: shape {a.shape}, ONNX Runtime {b.shape}"
        finite = np.isfinite(a) & np.isfinite(b)
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return f"output {k}: non-finite values differ"
        scale = max(1.0, float(np.max(np.abs(a[finite]), initial=0.0)))
        err = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
        if err > 1e-3 * scale:
            return f"output {k}: differs from ONNX Runtime by {err:.3g} (scale {scale:.3g})"
    return None


def answer(data: bytes) -> tuple[str, str]:
    """('clean' | 'imported' | 'bug' | 'wrong' | 'hang', detail) for one mutant."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        try:
            text, weights = import_onnx(data)
        except CLEAN as e:
            msg = str(e)
            if "internal error" in msg or "this is a bug" in msg:
                return "bug", msg.splitlines()[0]
            return "clean", type(e).__name__
        load_network(text)  # (import_onnx has checked it builds with these weights)
        wrong = _compare_with_ort(data, text, weights)
        return ("wrong", wrong) if wrong else ("imported", "")
    except _Timeout:
        return "hang", f"no answer within {HANG_S:g} s"
    except Exception as e:  # noqa: BLE001 - what the fuzzer looks for
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return "bug", f"{type(e).__name__}: {str(e)[:200]} at {tb.filename}:{tb.lineno}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fuzz(count: int, start: int = 0) -> tuple[Counter, list[str]]:
    seeds = seed_models()
    counts: Counter = Counter()
    problems = []
    for k in range(start, start + count):
        i = k % len(seeds)
        data, what = mutate(seeds[i], k)
        outcome, detail = answer(data)
        counts[outcome] += 1
        if outcome in ("bug", "wrong", "hang"):
            problems.append(f"seed {i} ({(ZOO + [('torchish', {})])[i][0]}) mutant {k} "
                            f"[{what}]: {outcome}: {detail}")
    return counts, problems


def test_seeds_import_cleanly():
    for data in seed_models():
        assert answer(data) == ("imported", "")


def test_fuzz_onnx_import():
    long = os.environ.get("CNNC_FUZZ_LONG") == "1"
    count = int(os.environ.get("CNNC_FUZZ_COUNT", LONG if long else SHORT))
    counts, problems = fuzz(count, int(os.environ.get("CNNC_FUZZ_START", 0)))
    print(f"{count} mutants: {dict(counts)}")
    assert not problems, "\n".join(problems[:30])
    # The mutants must reach the importer's checks, not only the protobuf parser.
    assert counts["clean"] and counts["imported"]


def test_oracle_catches_a_wrong_import(monkeypatch):
    """The comparison with ONNX Runtime is live: a relu imported as a sigmoid is caught."""
    import cnnc.runtime.onnx.handlers as imp

    monkeypatch.setitem(imp.HANDLERS, "Relu", imp.HANDLERS["Sigmoid"])
    assert answer(seed_models()[1])[0] == "wrong"  # resnet18


def test_errors_inside_a_handler(monkeypatch, tmp_path, capsys):
    """A handler's own KeyError or IndexError is a bug in cnnc, not a malformed model: it
    surfaces as itself (the command line reports an internal error, status 70), never as a
    user error about the node (malformed nodes are refused by the checks that read them:
    test_onnx_import.py's test_malformed_nodes_are_named)."""
    import cnnc.runtime.onnx.handlers as imp

    def key_error(importer: Any, node: Any, i: int) -> None:
        raise KeyError("kernel_shape")

    def index_error(importer: Any, node: Any, i: int) -> None:
        raise IndexError("list index out of range")

    resnet = seed_models()[1]
    for bug in (key_error, index_error):
        monkeypatch.setitem(imp.HANDLERS, "Relu", bug)
        with pytest.raises((KeyError, IndexError)):
            import_onnx(resnet)
        assert answer(resnet)[0] == "bug"
    (tmp_path / "m.onnx").write_bytes(resnet)
    assert main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.cnn")]) == 70
    assert "internal error: IndexError" in capsys.readouterr().err
    assert not (tmp_path / "m.cnn").exists()
