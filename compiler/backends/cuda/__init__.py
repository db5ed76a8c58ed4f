"""The CUDA backend: the printer (kernel IR -> CUDA C), the launch arithmetic every executor of
its kernels shares (``launch``), NVRTC and nvcc compilation without a device (``nvrtc``), and
the object the lowering driver loads kernels through (``loader.CudaBackend``).

Importing this package imports no CUDA library; CuPy is imported only where a kernel is loaded
onto a GPU.
"""
