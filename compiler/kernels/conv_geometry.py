"""The geometry of a convolution as its kernels see it (:class:`ConvGeometry`: every size,
the channel blocking, the padded output) and which kernel runs it (:func:`channelwise`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..types import spatial_out
from .tiles import TILE_K, DirectTile


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


#: Fewest channels a group that the direct kernel pads to a whole 8-channel block (zero
#: weights) rather than reading in a block of their own count: at 6 or 7 the padding costs a
#: third or less of the multiply-adds, and an input in whole 8-channel blocks can stay
#: channel-blocked from its producer (LeNet-5's c1 -> s2 -> c3: no unpacking of c1, no packing
#: for c3, s2 in vectors); a 3-channel stem keeps its 3-channel block.
PAD_TO_BLOCK = 6


def channelwise(c: int, k: int, groups: int) -> bool:
    """Whether a grouped convolution runs as the channel-wise kernel, whose 8 lanes are 8
    output channels: each group maps its channels to as many outputs (``C == K``) and a group
    fits inside an 8-channel block (``C/groups`` divides 8), so an output block reads only
    the input block at the same place. Depthwise convolutions (one channel a group) and the
    narrow groups of ResNeXt's first stages (4 and 8 channels)."""
    return groups > 1 and c == k and c % groups == 0 and 8 % (c // groups) == 0



@dataclass(frozen=True)
class ConvGeometry:
    """Every size a convolution kernel needs (batch excluded), validated."""

    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    dh: int
    dw: int
    groups: int
    bias: bool
    activation: str | None
    # Channels a block of the channel-blocked storage the compute kernel reads (a producer's
    # NCHW16c storage: 16; the kernel's own packed input: 8) and writes (its NCHW16c output
    # storage: 16; NCHW8c storage or the packed output an unpack reads: 8). The channel-wise
    # kernel works in one block width: its lanes are channels in and out.
    lanes_in: int = 8
    lanes_out: int = 8
    # Whether that storage is NHWC (8-channel blocks, the blocks of a pixel adjacent: a
    # producer's or consumer's storage only; the packed scratch buffers are NCHW8c).
    nhwc_in: bool = False
    nhwc_out: bool = False

    @classmethod
    def from_attrs(cls, attrs: dict, in_shape: tuple[int, ...],
                   activation: str | None = None) -> ConvGeometry:
        """From a conv node's canonical attributes (``compiler/ops/conv.py``)."""
        C, H, W = (int(d) for d in in_shape)
        g = cls(C, H, W, attrs["out_channels"], *attrs["kernel"], *attrs["stride"],
                *attrs["pads"], *attrs["dilation"], attrs["groups"], bool(attrs["bias"]),
                activation)
        g.validate()
        return g

    def validate(self) -> None:
        if min(self.C, self.H, self.W, self.K, self.R, self.S) < 1:
            raise ValueError(f"conv sizes must be positive: {self}")
        if min(self.sh, self.sw, self.dh, self.dw, self.groups) < 1:
            raise ValueError(f"conv stride, dilation and groups must be >= 1: {self}")
        if min(self.pt, self.pl, self.pb, self.pr) < 0:
            raise ValueError(f"conv pads must be >= 0: {self}")
        if self.C % self.groups or self.K % self.groups:
            raise ValueError(f"groups={self.groups} must divide in_channels={self.C} and "
                             f"out_channels={self.K}")
        if self.P < 1 or self.Q < 1:
            raise ValueError(f"conv output would be empty ({self.P}x{self.Q}): {self}")
        if self.lanes_in not in (8, 16) or self.lanes_out not in (8, 16):
            raise ValueError(f"conv blocks are 8 or 16 channels: {self}")
        if self.channelwise and self.lanes_in != self.lanes_out:
            raise ValueError(f"a channel-wise convolution reads and writes one block width: "
                             f"{self}")
        if (self.nhwc_in and self.lanes_in != 8) or (self.nhwc_out and self.lanes_out != 8):
            raise ValueError(f"NHWC storage is read and written in 8-channel blocks: {self}")
        if self.lanes_in == 16 and not self.channelwise and self.Cg % 8 and self.groups > 1:
            raise ValueError(f"blocked input needs whole 8-channel blocks per group: {self}")

    @property
    def P(self) -> int:
        return spatial_out(self.H, self.R, self.sh, self.pt, self.pb, self.dh)

    @property
    def Q(self) -> int:
        return spatial_out(self.W, self.S, self.sw, self.pl, self.pr, self.dw)

    @property
    def Cg(self) -> int:
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        return self.K // self.groups

    @property
    def channelwise(self) -> bool:
        """Run by the channel-wise kernel (its lanes are channels; depthwise and narrow
        groups: ``ops.conv.channelwise``) rather than the register-tiled direct one."""
        return channelwise(self.C, self.K, self.groups)

    @property
    def C8(self) -> int:
        """Input blocks of ``lanes_in`` channels (channel-wise: of the output too)."""
        return ceil_div(self.C, self.lanes_in)

    @property
    def Hp(self) -> int:
        # Only rows the kernel reads: (P-1)*sh + (R-1)*dh + 1 <= H + pt + pb.
        return (self.P - 1) * self.sh + (self.R - 1) * self.dh + 1

    @property
    def Wp(self) -> int:
        return (self.Q - 1) * self.sw + (self.S - 1) * self.dw + 1

    # Blocking of the direct kernel -----------------------------------------------------------
    @property
    def CB(self) -> int:
        """Channel block of the direct kernel's loops and weights: 8, or the group's channel
        count when it is below :data:`PAD_TO_BLOCK` (3-channel stem), whatever the input
        storage's block (an NCHW16c input is read as two 8-channel halves a block, in the order
        of NCHW8c: the same sums); the channel-wise kernel's: ``lanes_in``."""
        if self.channelwise:
            return self.lanes_in
        return 8 if self.Cg >= PAD_TO_BLOCK else self.Cg

    @property
    def Cgb(self) -> int:
        """Channel blocks per group (direct kernel)."""
        return self.C8 if self.channelwise else ceil_div(self.Cg, self.CB)

    @property
    def Kgb(self) -> int:
        """16-channel output blocks per group (direct kernel)."""
        return ceil_div(self.Kg, TILE_K)

    def k_tiles(self, tile: DirectTile) -> int:
        """Register tiles of ``tile.channels`` output channels per group (direct kernel)."""
        if (self.Kgb * TILE_K) % tile.channels:
            raise ValueError(f"tile {tile} does not divide {self.Kg} output channels per group "
                             f"(padded to {self.Kgb * TILE_K})")
        return self.Kgb * TILE_K // tile.channels

    @property
    def out_blocks(self) -> int:
        """Blocks of ``lanes_out`` channels of the compute kernel's output (the direct kernel
        pads each group's output channels to a multiple of 16)."""
        if self.channelwise:
            return self.C8
        return TILE_K // self.lanes_out * self.groups * self.Kgb

    @property
    def output_blocks_dense(self) -> bool:
        """Whether the output's channel blocks are the tensor's dense blocks: no group's
        output channels are padded inside the tensor (the direct kernel pads each group's to
        whole 16-channel block pairs, so groups must fill them exactly)."""
        return self.channelwise or self.groups == 1 or self.Kg % TILE_K == 0

    def pack_ints(self) -> tuple[int, int, int, int]:
        """``pack_nchw_blocked``'s blocking of the input: blocks per image, channel block,
        channels and blocks per group (channel-wise: one group of all channels)."""
        if self.channelwise:
            return self.C8, self.lanes_in, self.C, self.C8
        return self.groups * self.Cgb, self.CB, self.Cg, self.Cgb

    def unpack_ints(self) -> tuple[int, ...]:
        """``unpack_blocked_nchw``'s sizes of the packed output: K, P, Q, channels per group,
        their padded count, blocks per image."""
        if self.channelwise:
            return self.K, self.P, self.Q, self.K, self.C8 * self.lanes_out, self.C8
        return self.K, self.P, self.Q, self.Kg, self.Kgb * TILE_K, self.out_blocks

    @property
    def flops_per_image(self) -> int:
        return 2 * self.K * self.Cg * self.R * self.S * self.P * self.Q

    def describe(self) -> str:
        return (f"conv {self.C}x{self.H}x{self.W} -> {self.K}x{self.P}x{self.Q} "
                f"k{self.R}x{self.S} s{self.sh}x{self.sw} d{self.dh}x{self.dw} "
                f"pads{(self.pt, self.pl, self.pb, self.pr)} g{self.groups}"
                f"{' bias' if self.bias else ''}{' ' + self.activation if self.activation else ''}")

    def tag(self) -> str:
        """A short identifier-safe name built from numbers only."""
        return (f"c{self.C}_{self.H}x{self.W}_k{self.K}_{self.R}x{self.S}_s{self.sh}{self.sw}"
                f"_p{self.pt}{self.pl}{self.pb}{self.pr}_d{self.dh}{self.dw}_g{self.groups}")
