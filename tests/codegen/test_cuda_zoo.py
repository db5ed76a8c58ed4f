"""Every zoo network's CUDA module, printed once and compiled without a GPU (NVRTC, and nvcc
where it is installed), warnings failing like errors; and a few networks run through the CPU
emulation of that very source, every step checked against the float64 reference.

Time: printing all the modules takes about 20 s (mostly the pass pipeline). NVRTC checks the
whole zoo through its front end and NVVM (PTX for compute_80 and compute_90, unoptimized: 5 s
each); the full optimized build down to machine code (CUBIN for sm_80 and sm_90, and
``nvcc -cubin``) runs on two whole modules, as it takes about 40 s per architecture for the
zoo's 70 distinct kernels (``cnnc compile --target cuda --emit`` writes any module to build).
"""

from __future__ import annotations

import re

import pytest

from cnnc import zoo
from cnnc.compiler.backends.cuda.emulate import compiler_path
from cnnc.compiler.backends.cuda.nvrtc import (
    ARCHITECTURES,
    COMPILE_OPTIONS,
    CudaCompileError,
    nvcc_compile,
    nvcc_path,
    nvrtc_compile,
    nvrtc_library,
    resource_usage,
)
from cnnc.compiler.backends.cuda.printer import PRELUDE
from cnnc.compiler.kernels.gpu_conv import DEFAULT_TILE, TILE_K, GemmTile
from cnnc.dsl.builder import load_zoo
from cnnc.runtime.check import check
from cnnc.runtime.model import cuda_sources

needs_nvrtc = pytest.mark.skipif(nvrtc_library() is None,
                                 reason="NVRTC is not installed (pip install nvidia-cuda-nvrtc)")

_KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(')


@pytest.fixture(scope="module")
def modules() -> dict[str, str]:
    """Every zoo network's CUDA module, by network name."""
    out = {}
    for name in zoo.names():
        (source,) = cuda_sources(name).values()
        out[name] = source
    return out


def distinct_kernels(modules: dict[str, str]) -> str:
    """One module of every distinct kernel of ``modules`` (the code of a kernel, its name
    aside), each renamed after the first network that has it."""
    seen: dict[str, str] = {}
    for net, source in modules.items():
        body = source.split(PRELUDE, 1)[1]
        for chunk in re.split(r'\n(?=(?://[^\n]*\n)*extern "C")', body):
            found = _KERNEL.search(chunk)
            if found is None:
                continue
            code = re.sub(r"^//.*\n", "", chunk.strip() + "\n", flags=re.M)
            key = code.replace(f"void {found.group(1)}(", "void k(", 1)
            seen.setdefault(key, code.replace(f"void {found.group(1)}(",
                                              f"void {net}_{found.group(1)}(", 1))
    return "\n".join([PRELUDE, *seen.values()])


def test_every_zoo_network_prints_every_kernel(modules):
    assert set(modules) == set(zoo.names())
    for name, source in modules.items():
        names = _KERNEL.findall(source)
        assert names and len(names) == len(set(names)), name
        assert "__global__" in source and f"model_{name}" in source


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_nvrtc_compiles_every_zoo_kernel(modules, arch):
    virtual = arch.replace("sm_", "compute_")
    nvrtc_compile(distinct_kernels(modules), virtual, "zoo.cu", COMPILE_OPTIONS + ("-G",))


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("net", ["lenet5", "squeezenet1_1"])
def test_nvrtc_builds_whole_modules(modules, arch, net):
    assert nvrtc_compile(modules[net], arch, f"model_{net}.cu")[:4] == b"\x7fELF"


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed on this machine")
def test_nvcc_builds_a_whole_module(modules):
    """And reports each kernel's resources: every kernel of the module once, each implicit
    GEMM's shared memory its two tiles of floats (its tile in its name, 64 x 64 without),
    its threads within a block's registers."""
    usage = resource_usage(nvcc_compile(modules["lenet5"], "sm_80", "model_lenet5.cu",
                                        resources=True))
    printed = re.findall(r'__global__ void (\w+)\(', modules["lenet5"])
    assert sorted(r.kernel for r in usage) == sorted(printed)
    gemms = [r for r in usage if r.kernel.startswith("conv_implicit_gemm")]
    assert gemms
    for gemm in gemms:
        suffix = gemm.kernel[len("conv_implicit_gemm_"):]
        tile = GemmTile.parse(suffix) if suffix else DEFAULT_TILE
        assert gemm.shared_bytes == 4 * TILE_K * (tile.m + tile.n)
        assert 0 < gemm.registers * tile.threads <= 65536 and gemm.spill_stores == 0


@needs_nvrtc
def test_a_warning_fails_the_compile():
    broken = PRELUDE + '\nextern "C" __global__ void k(float* y) { int unused = 1; y[0] = 0; }\n'
    with pytest.raises(CudaCompileError, match="unused"):
        nvrtc_compile(broken, "compute_80")


# -- the same source, run on the CPU -----------------------------------------------------------

@pytest.mark.skipif(compiler_path() is None, reason="no C++ compiler (g++/clang++)")
@pytest.mark.parametrize("net, size", [("lenet5", None), ("squeezenet1_1", 64),
                                       ("resnet18", 32)])
def test_emulated_cuda_kernels_match_the_float64_reference(net, size, tmp_path):
    graph = load_zoo(net, **({"size": size} if size else {}))
    _, rows = check(graph, target="cuda-emu", batch=2, cache_dir=tmp_path)
    failed = [r for r in rows if not r.ok]
    assert rows and not failed, failed
