"""What the pass tests share."""

import pytest

#: Convolutions of one kernel (3x3, 16 -> 16 channels, blocked in and out) with no epilogue
#: (b, c: c's ReLU is the kernel's relu argument), add then ReLU (d) and add alone (f): the
#: forms ``share_residual_kernels`` gives one kernel; the stem reads the plain input and the
#: last one writes the plain output (kernels of their own). A network body: the tests put
#: their own header (the input's size) above it.
_RESIDUAL_FORMS = """a = x -> conv(16, 3, pad=1) -> relu
b = a -> conv(16, 3, pad=1)
c = b -> conv(16, 3, pad=1) -> relu
d = c -> conv(16, 3, pad=1)
e = relu(d + b)
f = e -> conv(16, 3, pad=1)
g = f + c
g -> conv(16, 3, pad=1) -> output y"""


@pytest.fixture
def residual_forms() -> str:
    """The body of a network with every residual form of one convolution kernel."""
    return _RESIDUAL_FORMS
