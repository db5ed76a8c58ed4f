"""The lowering floor: the driver that turns an optimized graph into a Plan (``driver``) and
memory planning, its last analysis (``memory``)."""

from .driver import LowerCtx, lower_graph

__all__ = ["LowerCtx", "lower_graph"]
