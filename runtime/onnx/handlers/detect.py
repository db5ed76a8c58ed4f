"""Detection: NonMaxSuppression as cnnc's nms over the boxes [N, B, 4] and scores [N, C, B]
(``compiler/ops/detect.py``). cnnc's result is its padded detection rows, of which ONNX's
``selected_indices`` (batch, class, box) are the image, class and index columns; refused with
center-format boxes and where the limits are not constants."""

from __future__ import annotations

from typing import Any

from ....compiler.ops.detect import NO_THRESHOLD
from ..importer import Handler, Importer, f32_literal, node_attrs, refuse


def _nms(imp: Importer, node: Any, i: int) -> None:
    if node_attrs(node).get("center_point_box", 0):
        raise refuse(node, imp.opset, "center_point_box=1 (centre, size) boxes are not "
                     "supported; cnnc's nms takes two opposite corners")
    boxes, scores = imp.dyn(node, 0), imp.dyn(node, 1)
    if len(imp.shapes[scores]) != 2:
        raise refuse(node, imp.opset, f"scores must be N x classes x boxes, got per-sample "
                     f"{list(imp.shapes[scores])}")
    per_class = imp.opt_const(node, 2)
    iou = imp.opt_const(node, 3)
    score = imp.opt_const(node, 4)
    top_k = 0 if per_class is None or not per_class.size else int(per_class.reshape(-1)[0])
    if top_k < 1:
        raise refuse(node, imp.opset, "max_output_boxes_per_class is absent or 0: the node "
                     "selects nothing")
    top_k = min(top_k, imp.shapes[boxes][0])  # no class keeps more boxes than there are
    args = {"iou": 0.0 if iou is None or not iou.size else f32_literal(iou.reshape(-1)[0]),
            "score": NO_THRESHOLD if score is None or not score.size
            else f32_literal(score.reshape(-1)[0]),
            "top_k": top_k, "max_boxes": top_k * imp.shapes[scores][0]}
    imp.add(node, "nms", args, [boxes, scores])


HANDLERS: dict[str, Handler] = {
    "NonMaxSuppression": _nms,
}
