"""RoI pooling's gradients (compiler/ops/roi.py): the map's gradient against central finite
differences of the float64 reference, and the compiled backward kernels within their error
bounds (``cnnc check``'s rules)."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.runtime.check import check_plan, format_rows

from .gradcheck import check_gradients, random_feed, training_graph


@pytest.mark.parametrize("body", [
    "roi_maxpool(rois, output=(2, 3), spatial_scale=0.5)",
    "roi_align(rois, output=2, spatial_scale=0.5, sampling_ratio=2)",
    "roi_align(rois, output=(2, 1), coordinates=output_half_pixel)",
])
def test_gradients_match_finite_differences(body):
    """The map's gradient (and the convolution's before it); the regions get none."""
    source = (f"network t\ninput x: 2 x 7 x 6\ninput rois: 3 x 4\n"
              f"x -> conv(2, 3, pad=1) -> {body} -> output y\n")
    rng = np.random.default_rng(5)
    tg = training_graph(source)
    feed, params = random_feed(tg, 2, rng)
    feed["rois"] = rng.uniform(-2, 9, feed["rois"].shape)
    assert check_gradients(tg, feed, params, rng) > 0


def test_compiled_backward_kernels_within_their_bounds():
    source = ("network t\ninput x: 2 x 7 x 6\ninput rois: 3 x 4\n"
              "f = x -> conv(2, 3, pad=1)\n"
              "m = f -> roi_maxpool(rois, output=(2, 3), spatial_scale=0.5) -> flatten\n"
              "a = f -> roi_align(rois, output=(2, 3), sampling_ratio=2) -> flatten\n"
              "add(m, a) -> output y\n")
    graph = cnnc.load(source)
    rng = np.random.default_rng(6)
    tm = cnnc.compile(graph, mode="train", loss="mse")
    feed = {"x": rng.standard_normal((2, 2, 7, 6)).astype(np.float32),
            "rois": rng.uniform(-2, 12, (2, 3, 4)).astype(np.float32),
            "labels": rng.standard_normal((2, 36)).astype(np.float32)}
    rows = check_plan(tm.plan, tm.executor, tm.params, feed)
    assert sum("roi_pool_grad" in r.op for r in rows) == 2
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
