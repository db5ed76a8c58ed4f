"""The pipelines, as explicit lists: the list is the documentation.

- ``-O0``: no optimization; only the passes every compile needs (lowering selection records the
  algorithm of each convolution: the default, or the user's choice; tile selection, the
  register tile of each direct convolution for the target's vector width; and, last in every
  pipeline, weight packing: each convolution's packed weights as a parameter-time node).
- ``-O1``: folding and fusion: canonicalization, constant folding, common-subexpression and
  dead-code elimination, batch-norm folding (into the producer, else into a following
  convolution or dense layer), 1x1 convolutions of one pixel as dense layers, transposed
  convolutions as one stride-1 convolution per output phase, channel shuffles
  and the concatenations and slices around them composed into gathers, epilogue fusion.
- ``-O2``: everything: -O1, sibling 1x1 convolutions merged, lowering chosen by the cost model,
  layout selection (activations stay channel-blocked between convolutions and pools), then
  pools read only by a 1x1 convolution computed in its kernel (prologue fusion), and the
  convolutions with and without a fused residual add sharing one kernel where both occur.

Training pipelines (``training=True``) leave out what is valid only for inference (batch-norm
folding: batch statistics change every step) and start with ``sync_batch_norm`` (batch
statistics over data-parallel replicas, when asked) and ``autodiff``
(``compiler/autodiff.py``), which adds the backward graph; every later pass then sees forward
and backward nodes alike. At -O1 and -O2 they split transposed convolutions (the convolutions'
input gradients) into phase convolutions as the inference pipelines do, write each
training batch norm's backward in closed form (``fuse_batchnorm_backward``) and fuse
epilogues where no backward op reads the value in between; lowering selection
also picks each weight gradient's algorithm. At -O2 layout selection keeps channel-blocked
the values whose every reader has a blocked kernel: the backward ops read NCHW, so these are
the activations no backward op reads (a frozen backbone under a trained head).
"""

from __future__ import annotations

from ..autodiff import autodiff
from .canonicalize import canonicalize
from .conv_as_dense import conv_as_dense
from .conv_transpose_as_phases import conv_transpose_as_phases
from .eliminate_common_subexpressions import eliminate_common_subexpressions
from .eliminate_dead_code import eliminate_dead_code
from .fold_batchnorm import fold_batchnorm
from .fold_batchnorm_into_consumer import fold_batchnorm_into_consumer
from .fold_bottlenecks import fold_bottlenecks
from .fold_channel_moves import fold_channel_moves
from .fold_constants import fold_constants
from .fuse_batchnorm_backward import fuse_batchnorm_backward
from .fuse_epilogues import fuse_epilogues
from .fuse_prologues import fuse_prologues
from .manager import Pass
from .pack_weights import pack_weights
from .select_layout import select_layout
from .select_lowering import select_lowering
from .select_tile import select_tile
from .share_residual_kernels import share_residual_kernels
from .sync_batch_norm import sync_batch_norm

REQUIRED: list[tuple[str, Pass]] = [("select_lowering", select_lowering),
                                    ("select_tile", select_tile)]

CLEANUP: list[tuple[str, Pass]] = [
    ("canonicalize", canonicalize),
    ("fold_constants", fold_constants),
    ("eliminate_common_subexpressions", eliminate_common_subexpressions),
    ("eliminate_dead_code", eliminate_dead_code),
]

FOLD_AND_FUSE: list[tuple[str, Pass]] = [
    ("fold_batchnorm", fold_batchnorm),
    ("fold_batchnorm_into_consumer", fold_batchnorm_into_consumer),
    ("conv_as_dense", conv_as_dense),
    ("conv_transpose_as_phases", conv_transpose_as_phases),
    ("fold_channel_moves", fold_channel_moves),
    ("fuse_epilogues", fuse_epilogues),
]

#: Last in every pipeline: it packs for the decisions all the others made.
PACK: list[tuple[str, Pass]] = [("pack_weights", pack_weights)]

INFERENCE: dict[int, list[tuple[str, Pass]]] = {
    0: REQUIRED + PACK,
    1: CLEANUP + FOLD_AND_FUSE + [("eliminate_dead_code", eliminate_dead_code)] + REQUIRED
    + PACK,
    2: CLEANUP + FOLD_AND_FUSE + [("fold_bottlenecks", fold_bottlenecks),
                                  ("eliminate_dead_code", eliminate_dead_code)] + REQUIRED
    + [("select_layout", select_layout), ("fuse_prologues", fuse_prologues),
       ("share_residual_kernels", share_residual_kernels)] + PACK,
}

#: Batch norm synchronized over data-parallel replicas where asked (before the gradients, so
#: that they go through the collectives), then the backward graph.
AUTODIFF: list[tuple[str, Pass]] = [("sync_batch_norm", sync_batch_norm), ("autodiff", autodiff)]

#: The input gradients of convolutions are transposed convolutions: one stride-1 convolution
#: per output phase does the multiply-adds of the gradient where the zero-stuffed one does s^2
#: times as many (and at stride 1 skips the stuffing copy).
PHASES: list[tuple[str, Pass]] = [("conv_transpose_as_phases", conv_transpose_as_phases)]

#: Batch norm's backward as its closed form: one pass of sums, one for the input gradient.
FUSE_BACKWARD: list[tuple[str, Pass]] = [("fuse_batchnorm_backward", fuse_batchnorm_backward)]

#: Element-wise ops fused into their producers where no backward op reads the value between.
EPILOGUES: list[tuple[str, Pass]] = [("fuse_epilogues", fuse_epilogues)]

TRAINING: dict[int, list[tuple[str, Pass]]] = {
    0: AUTODIFF + REQUIRED + PACK,
    1: AUTODIFF + CLEANUP + FUSE_BACKWARD + PHASES + EPILOGUES + REQUIRED + PACK,
    2: AUTODIFF + CLEANUP + FUSE_BACKWARD + PHASES + EPILOGUES + REQUIRED
    + [("select_layout", select_layout)] + PACK,
}


def pipeline(opt_level: int, training: bool = False) -> list[tuple[str, Pass]]:
    """The passes of ``-O<opt_level>``."""
    table = TRAINING if training else INFERENCE
    if opt_level not in table:
        raise ValueError(f"optimization level must be 0, 1 or 2, got {opt_level!r}")
    return list(table[opt_level])
