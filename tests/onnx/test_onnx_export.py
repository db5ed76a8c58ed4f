"""ONNX export: networks written in the DSL (every op, and the zoo at reduced sizes) are
exported, run by ONNX Runtime, and compared with cnnc's float64 reference; then imported back,
which must give the reference's numbers again.

Tolerance: max |reference - ORT| <= 1e-4 * max(1, max |reference|).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cnnc import zoo  # noqa: E402
from cnnc.compiler.ir import Graph  # noqa: E402
from cnnc.compiler.ops import all_ops  # noqa: E402
from cnnc.dsl import ast  # noqa: E402
from cnnc.dsl.builder import load_network, load_zoo  # noqa: E402
from cnnc.dsl.errors import DslError  # noqa: E402
from cnnc.dsl.parser import parse  # noqa: E402
from cnnc.runtime.cli import main  # noqa: E402
from cnnc.runtime.onnx import export_onnx, import_onnx  # noqa: E402
from cnnc.runtime.onnx.export import (  # noqa: E402
    CONVERTERS,
    IR_VERSION,
    OPSET,
    OnnxExportError,
)
from cnnc.runtime.reference import run_reference  # noqa: E402
from cnnc.runtime.summary import summarize  # noqa: E402
from cnnc.runtime.weights import init_params  # noqa: E402

TOL = 1e-4


def _session(model: Any) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def _feeds(graph: Graph, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((batch,) + graph.node(v).type.shape).astype(np.float32)
            for k, v in graph.inputs.items()}


def _close(ours: dict[str, np.ndarray], theirs: list[np.ndarray] | dict[str, np.ndarray],
           what: str) -> None:
    values = list(theirs.values()) if isinstance(theirs, dict) else theirs
    assert len(ours) == len(values)
    for (name, mine), other in zip(ours.items(), values):
        assert mine.shape == other.shape, (what, name, mine.shape, other.shape)
        scale = max(1.0, float(np.max(np.abs(mine))))
        err = float(np.max(np.abs(mine - other)))
        assert err <= TOL * scale, f"{what} {name}: error {err:.3g} (scale {scale:.3g})"


def check_export(graph: Graph, roundtrip: bool = True, seed: int = 0) -> Any:
    """Export with seeded weights; ORT must match the reference; importing the ONNX model
    back must too (same numbers: the weights are the same float32 values)."""
    params = init_params(graph, seed)
    feeds = _feeds(graph, seed=seed)
    reference = run_reference(graph, feeds, params)
    model = export_onnx(graph, params)
    _close(reference, _session(model).run(None, feeds), f"{graph.name} ORT")
    if roundtrip:
        text, weights = import_onnx(model)
        again = load_network(text)
        renamed = dict(zip(again.inputs, feeds.values()))
        _close(reference, run_reference(again, renamed, weights), f"{graph.name} re-imported")
    return model


# -- every op ---------------------------------------------------------------------------------

def test_every_op_has_a_converter():
    # parameter-time ops (folded batch norms) and ops made by passes (channel gathers) exist
    # only in optimized graphs, which are never exported: export writes the network as written
    ops = {n for n, op in all_ops().items() if not (op.internal or op.pass_made)} - \
        {"input", "param"}
    assert ops - set(CONVERTERS) - set(NOT_EXPORTED) == set()
    assert set(NOT_EXPORTED) <= ops - set(CONVERTERS), "stale names in NOT_EXPORTED"


#: Ops the exporter refuses by name, and why.
NOT_EXPORTED = {
    op: "detection post-processing (compiler/ops/detect.py): ONNX's NonMaxSuppression returns "
        "indices, not padded rows, and has no decoding or IoU operator; export the network up "
        "to its head"
    for op in ("iou", "yolo_decode", "nms")}
NOT_EXPORTED.update({
    op: "ONNX's MaxRoiPool and RoiAlign take the regions of the whole batch with an image index; "
        "cnnc's take each image's own (compared with ONNX Runtime in tests/ops/test_roi.py)"
    for op in ("roi_maxpool", "roi_align")})


ALL_OPS = """
network every_op
input image: 3 x 9 x 10
input vec: 6
a = image -> conv(8, 3, stride=2, pad=(1, 0, 2, 1)) -> batchnorm -> relu
b = a -> maxpool(3, stride=2, pad=1, ceil_mode=true)
      -> avgpool(2, stride=1, pad=1, ceil_mode=true, count_include_pad=false)
      -> avgpool(2, stride=1, pad=1)
c = a -> minpool(2, stride=1, dilation=2) -> lppool(2, stride=1, p=3)
d = a -> conv_transpose(4, 3, stride=2, pad=1, output_padding=1, groups=2)
      -> upsample(2) -> upsample(2, mode=bilinear)
      -> upsample(1.5, mode=bilinear, align_corners=true)
e = a -> pad((1, 2, 0, 1), value=0.5) -> maxpool(2, stride=1) -> avgpool((1, 3), stride=1)
      -> flip(axis=horizontal) -> flip(axis=vertical) -> flip -> gelu -> swish -> hard_swish
      -> hard_sigmoid -> relu6 -> leaky_relu(0.2) -> sigmoid -> tanh -> abs -> lrn(3)
      -> groupnorm(2) -> softmax -> log_softmax -> softmax(axis=2) -> dropout -> identity
      -> conv(8, 1, groups=4, dilation=2, bias=false) -> channel_slice(0, 8)
g = a -> globalavgpool
h = a -> globalmaxpool
a -> channel_shuffle(2) -> depth_to_space(2, mode=CRD) -> space_to_depth(2, mode=CRD)
  -> depth_to_space(2) -> avgpool(2, stride=1, pad=1, dilation=2, count_include_pad=false)
  -> output rearranged
k = (a * g + h - a) -> channel_slice(1, 7) -> conv(8, 1)
m = concat(k, e) -> reshape((16, 5, 5)) -> flatten -> dense(6) -> batchnorm
n = m + vec
n -> output sum
distance(m, vec) -> output l2
distance(m, vec, p=1) -> output l1
vec -> output passthrough
b -> flatten -> dense(5, bias=false) -> log_softmax -> output scores
c -> output minlp
d -> output up
a -> elu(0.5) -> selu -> softplus -> mish -> prelu -> instance_norm -> pad(1, mode=reflect)
  -> pad((1, 0, 2, 3), mode=edge) -> prelu(num_parameters=1) -> output issue9
m -> prelu -> output issue9_features
"""


def test_every_op_network():
    graph = load_network(ALL_OPS)
    ops = {n.op for n in graph.compute_nodes()}
    assert set(CONVERTERS) <= ops, "add the missing ops to ALL_OPS"
    check_export(graph)


def test_resize_attributes_export():
    """upsample's modes and ONNX attributes written as Resize's: ONNX Runtime computes the same
    numbers, and the file imports back to them (scales where float32 holds the scale, else
    sizes)."""
    graph = load_network("""
network resizes
input image: 3 x 8 x 10
image -> upsample(0.5, mode=bicubic, antialias=true, exclude_outside=true, cubic_a=-0.5)
      -> output shrunk
image -> upsample(size=(11, 7), mode=bicubic) -> output sized
image -> upsample(1.5, mode=bilinear, coordinates=tf_crop_and_resize, roi=(0.1, -0.2, 0.9, 1.1),
                  extrapolation=1.5) -> output cropped
image -> upsample(2, coordinates=half_pixel, rounding=round_prefer_ceil) -> output nearest
image -> upsample((1.25, 0.6), mode=bilinear, coordinates=half_pixel_symmetric)
      -> output symmetric
""")
    model = check_export(graph)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 5
    sized = resizes[1]  # a width scale of 7 / 10, which float32 does not hold: sizes
    assert len(sized.input) == 4 and sized.input[2] == "" and sized.input[3]
    both = load_network("input x: 1 x 4 x 4\nx -> upsample(2, size=(5, 5)) -> output y\n")
    with pytest.raises(OnnxExportError, match=r"scale \(2.0, 2.0\) and size \(5, 5\)"):
        export_onnx(both, {})


def test_exports_without_an_exact_import_form():
    """lppool with a fractional p and distance with p = 3 are written as ONNX subgraphs (no
    single ONNX op does them); ORT must still agree with the reference."""
    graph = load_network("""
network fractional
input image: 2 x 7 x 6
input other: 2 x 7 x 6
image -> lppool(2, stride=2, p=1.5, ceil_mode=true, pad=1) -> output pooled
distance(image, other, p=3) -> output d3
""")
    check_export(graph, roundtrip=False)


def test_gelu_tanh():
    """gelu(approximate=tanh) exports as Gelu(approximate="tanh") and imports back."""
    graph = load_network("""
network gelu_tanh
input x: 3 x 4 x 4
x -> gelu(approximate=tanh) -> output y
""")
    model = check_export(graph)
    assert helper_attr(model, "Gelu", "approximate") == "tanh"
    text, _ = import_onnx(model)
    assert "gelu(approximate=tanh)" in text


def helper_attr(model: Any, op: str, name: str) -> Any:
    (node,) = [n for n in model.graph.node if n.op_type == op]
    (attr,) = [a for a in node.attribute if a.name == name]
    value = onnx.helper.get_attribute_value(attr)
    return value.decode() if isinstance(value, bytes) else value


def test_model_metadata(tmp_path):
    graph = load_network("""
network meta
input image: 3 x 8 x 8
image -> conv(4, 3, pad=1) as stem -> relu -> output features
image -> output raw
""")
    path = tmp_path / "meta.onnx"
    model = export_onnx(graph, None, path)
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in loaded.opset_import] == [("", OPSET)]
    dims = loaded.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 8, 8]
    assert {i.name for i in loaded.graph.initializer} == {"stem.weight", "stem.bias"}
    assert [o.name for o in model.graph.output] == ["features", "raw"]


# -- the zoo ----------------------------------------------------------------------------------

# Network parameters that shrink a zoo network without changing its structure.
SMALL = {"classes": 10, "hidden": 32, "embedding": 16, "width": 8, "w": 8, "growth": 8}
SIZES = (16, 24, 32, 48, 64, 80, 96, 128)
MAX_MACS = 400e6  # per sample; larger networks are skipped (the float64 reference is slow)


def _header_params(name: str) -> list[str]:
    module = parse(zoo.path(name).read_text(), str(zoo.path(name)))
    for item in module.items:
        if isinstance(item, ast.Header):
            return [p.name for p in item.params]
    return []


def small_zoo_graph(name: str) -> Graph:
    """The zoo network at the smallest input size it builds at, with small widths."""
    declared = _header_params(name)
    over = {k: v for k, v in SMALL.items() if k in declared}
    for size in SIZES if "size" in declared else ():
        try:
            return load_zoo(name, **over, size=size)
        except DslError:
            continue
    return load_zoo(name, **over)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_export_and_reimport(name):
    graph = small_zoo_graph(name)
    kept = sorted({n.op for n in graph.nodes()} & set(NOT_EXPORTED))
    if kept:
        pytest.skip(f"{name}: {', '.join(kept)}: {NOT_EXPORTED[kept[0]]}")
    macs = summarize(graph).macs
    if macs > MAX_MACS:
        pytest.skip(f"{name}: {macs / 1e6:.0f} M MACs per sample at its smallest size")
    check_export(graph)


# -- command line -----------------------------------------------------------------------------

def test_cli_export_then_import(tmp_path, capsys):
    onnx_path = tmp_path / "lenet.onnx"
    assert main(["export", "lenet5", "-o", str(onnx_path), "--param", "classes=7"]) == 0
    assert "wrote" in capsys.readouterr().out
    cnn = tmp_path / "lenet.cnn"
    assert main(["import", str(onnx_path), "-o", str(cnn), "--check"]) == 0
    assert "matches ONNX Runtime" in capsys.readouterr().out
    graph = load_network(cnn)
    assert list(graph.outputs) == list(load_zoo("lenet5", classes=7).outputs)


def test_cli_export_reports_bad_weights(tmp_path, capsys):
    bad = tmp_path / "w.npz"
    np.savez(bad, nothing=np.zeros(3))
    assert main(["export", "lenet5", "-o", str(tmp_path / "x.onnx"), "--weights", str(bad)]) == 2
    assert "error" in capsys.readouterr().err


def test_siamese_round_trip_keeps_the_shared_tower_and_the_output_names():
    """The shared tower's layers, applied to both inputs, come back as `shared` layers (the
    parameters once, not twice), and the output `distance` keeps its name."""
    graph = small_zoo_graph("siamese")
    model = check_export(graph)
    text, weights = import_onnx(model)
    again = load_network(text)
    count = sum(int(np.prod(v.shape)) for v in init_params(graph).values())
    assert sum(int(np.prod(v.shape)) for v in weights.values()) == count
    assert list(again.outputs) == list(graph.outputs)
    assert "shared " in text


def test_equal_weights_from_different_initializers_stay_separate():
    """Two layers with equal (here: zero) weights but their own initializers are not merged."""
    graph = load_network("""
network twins
input a: 3 x 4 x 4
input b: 3 x 4 x 4
a -> conv(4, 1) -> output ya
b -> conv(4, 1) -> output yb
""")
    params = {k: np.zeros_like(v) for k, v in init_params(graph).items()}
    text, weights = import_onnx(export_onnx(graph, params))
    assert "shared" not in text and len(weights) == 4
