"""Schedule invariance on generated networks: random chains of convolutions (1x1 and 3x3,
strides 1 and 2, odd channel counts), batch norms, activations, residual adds, max pools,
inception-like branches joined by a concatenation, and sibling 1x1 convolutions, compiled at
-O0 and -O2 (layout selection, in-place concatenation, bottleneck folding), each against the
float64 reference. The palette of kernel shapes is small, so the kernels come from the cache
after the first examples; the examples are derandomized (the same every run)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnc.dsl.builder import load_network
from cnnc.runtime.model import compile as compile_model
from cnnc.runtime.reference import run_reference

CHANNELS = st.sampled_from([8, 13, 16, 24, 32])
ACT = st.sampled_from(["relu", "relu6", "swish", "", ""])


@st.composite
def layers(draw, depth: int) -> list[str]:
    """DSL statements building tensors t0 (the input) .. t<depth>."""
    lines = []
    for i in range(1, depth + 1):
        prev = f"t{i - 1}"
        kind = draw(st.sampled_from(["conv", "conv", "residual", "pool", "branches"]))
        c = draw(CHANNELS)
        act = draw(ACT)
        tail = f" -> {act}" if act else ""
        if kind == "conv":
            k, s = draw(st.sampled_from([(1, 1), (3, 1), (3, 2)]))
            bn = " -> batchnorm" if draw(st.booleans()) else ""
            lines.append(f"t{i} = {prev} -> conv({c}, {k}, stride={s}, pad={k // 2}){bn}{tail}")
        elif kind == "residual":
            lines.append(f"r{i} = {prev} -> conv(channels({prev}), 3, pad=1) -> batchnorm")
            lines.append(f"t{i} = relu(r{i} + {prev})")
        elif kind == "pool":
            lines.append(f"t{i} = {prev} -> maxpool(3, stride=1, pad=1)")
        else:
            a, b = draw(st.sampled_from([16, 8])), draw(st.sampled_from([16, 32]))
            lines.append(f"t{i} = concat({prev} -> conv({a}, 1) -> relu, "
                         f"{prev} -> conv(16, 1) -> relu -> conv({b}, 3, pad=1) -> relu, "
                         f"{prev} -> conv(8, 1) -> relu -> conv(16, 3, pad=1))")
    return lines


@settings(max_examples=10, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(depth=st.integers(2, 5), data=st.data(), c0=st.sampled_from([3, 8, 12]),
       gap=st.booleans())
def test_generated_networks_agree_at_every_level(depth, data, c0, gap):
    body = data.draw(layers(depth))
    end = f"t{depth} -> globalavgpool -> flatten -> dense(4)" if gap else f"t{depth}"
    src = "network gen\ninput t0: {} x 9 x 8\n{}\n{} -> output y\n".format(
        c0, "\n".join(body), end)
    graph = load_network(src)
    x = np.random.default_rng(depth).standard_normal((2, c0, 9, 8)).astype(np.float32)
    model0 = compile_model(graph, seed=3, opt_level=0)
    want = run_reference(graph, {"t0": x}, model0.params)["y"]
    scale = max(1.0, float(np.abs(want).max()))
    for level in (0, 2):
        m = model0 if level == 0 else compile_model(graph, seed=3, opt_level=level)
        err = float(np.abs(m(x) - want).max()) / scale
        assert err < 1e-4, f"-O{level}: relative error {err:.3g}\n{src}"
