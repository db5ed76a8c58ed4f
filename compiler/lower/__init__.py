"""The lowering floor: the driver that turns an optimized graph into a Plan (``driver``) and
memory planning, its last analysis (``memory``); ``load_kernel`` loads a kernel that belongs
to no graph (the optimizer's updates) the same way."""

from .driver import LowerCtx, load_kernel, lower_graph

__all__ = ["LowerCtx", "load_kernel", "lower_graph"]
