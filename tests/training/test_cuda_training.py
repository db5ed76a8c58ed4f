"""Training on the GPU targets, run through the CPU emulation of the generated CUDA module
(``cuda-emu``): a small ResNet's ``loss_and_grads`` against the CPU target's and the float64
reference's, in every thread order; ``train_step``s against the CPU's; every step of training
graphs (dropout's int64 hash among them) within its error bound; the modules through NVRTC;
the refusals."""

from __future__ import annotations

import numpy as np
import pytest

import cnnc
from cnnc.compiler.backends.cuda.emulate import ORDERS, compiler_path
from cnnc.compiler.backends.cuda.memory import EmulatedArray
from cnnc.compiler.backends.cuda.nvrtc import COMPILE_OPTIONS, nvrtc_compile, nvrtc_library
from cnnc.compiler.kernels.optimizer import block_count
from cnnc.runtime.check import check_plan, format_rows
from cnnc.runtime.executor import Executor
from cnnc.runtime.reference import run_reference
from cnnc.runtime.train import TrainingError

from .test_backward_kernels import SIAMESE, WIDE, random_params, training_feed

pytestmark = pytest.mark.skipif(compiler_path() is None,
                                reason="no C++ compiler (g++/clang++) for the CUDA emulation")
needs_nvrtc = pytest.mark.skipif(nvrtc_library() is None,
                                 reason="NVRTC is not installed (pip install nvidia-cuda-nvrtc)")


def nvrtc_front_end(source: str) -> None:
    """Compile a module through NVRTC's front end and NVVM (PTX for compute_80, unoptimized:
    about a second; ``test_cuda_zoo.py`` builds whole modules down to machine code)."""
    nvrtc_compile(source, "compute_80", "train.cu", COMPILE_OPTIONS + ("-G",))

# A small ResNet: a strided stem convolution, batch norm in training, max pooling, a basic
# block (residual add) and a downsampling one (strided 3x3 and 1x1 shortcut), global average
# pooling, a dense head, cross-entropy.
RESNET = """network tiny_resnet
input image: 3 x 12 x 12

block basic(c) {
    y = in -> conv(c, 3, pad=1, bias=false) -> batchnorm -> relu
           -> conv(c, 3, pad=1, bias=false) -> batchnorm
    return relu(y + in)
}
block down(c) {
    y = in -> conv(c, 3, stride=2, pad=1, bias=false) -> batchnorm -> relu
           -> conv(c, 3, pad=1, bias=false) -> batchnorm
    s = in -> conv(c, 1, stride=2, bias=false) -> batchnorm
    return relu(y + s)
}

image -> conv(4, 3, stride=2, pad=1, bias=false) -> batchnorm -> relu -> maxpool(2, stride=1)
      -> basic(4) -> down(8) -> globalavgpool -> flatten -> dense(3) -> output logits
"""

OPTIONS = dict(loss="cross_entropy", optimizer="sgd", lr=0.05, momentum=0.9,
               weight_decay=1e-3)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """The ResNet compiled for training on the CPU and under emulation, the same weights; a
    batch of 3."""
    rng = np.random.default_rng(0)
    graph = cnnc.load(RESNET)
    params = random_params(graph, rng)
    cache = tmp_path_factory.mktemp("cuda-train")
    emu = cnnc.compile(graph, weights=params, mode="train", target="cuda-emu", cache_dir=cache,
                       **OPTIONS)
    # the suite's 8-lane target named: a module fixture is set up before the per-test one that
    # makes "cpu" mean it (tests/conftest.py), and 16-lane kernels would be compiled anew
    cpu = cnnc.compile(graph, weights=params, mode="train", target="avx2", **OPTIONS)
    x = rng.standard_normal((3, 3, 12, 12)).astype(np.float32)
    y = np.array([0, 2, 1])
    return emu, cpu, params, x, y


def module_of(tm):
    """The model's one emulated CUDA module (its thread order is set there)."""
    return tm.plan.steps[0].calls[0].fn.module()


def assert_close(got: np.ndarray, want: np.ndarray, scale: float, name: str) -> None:
    """float32 results of sums in different orders: within 1e-4 relative, plus 1e-5 of the
    tensor's largest value (the rule the CPU's training tests hold against float64)."""
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=scale * np.abs(want).max(),
                               err_msg=name)


def test_the_kernels_are_cuda_and_the_buffers_on_the_emulated_gpu(resnet):
    emu, *_ = resnet
    assert emu.plan.listing_file == "model_tiny_resnet.cu"
    source = emu.plan.listing
    # the optimizer's update and the gradient norm are kernels of the same module
    assert "void sgd_momentum_update(" in source and "void gradient_block_norms(" in source
    assert "float lr," in source
    for buf in (emu.flat_params, emu.flat_grads):
        assert isinstance(buf, EmulatedArray)
    assert {s.lowering for s in emu.plan.steps if s.op == "conv_weight_grad"} == {"implicit_gemm"}
    # batch norm's per-channel sums: a block of threads per channel, float64 in shared memory;
    # its per-(image, channel) kernels a block per plane, the threads striding its values
    assert source.count("__shared__ double") >= 3
    planes = {s.calls[0].fn.kernel.name for s in emu.plan.steps
              if s.op.split("+")[0] in ("batchnorm_train", "bn_grad_input")}
    bodies = [source.split(f"void {name}(")[1].split("\n}\n")[0] for name in planes]
    assert len(bodies) >= 2 and all("const int th = threadIdx.x;" in b for b in bodies)


@needs_nvrtc
def test_the_training_module_compiles_for_a_gpu(resnet):
    emu, *_ = resnet
    nvrtc_front_end(emu.plan.listing)


def test_loss_and_grads_equal_the_cpus_in_every_thread_order(resnet):
    """The loss and every gradient under emulation against the float64 reference and the CPU
    target's, within float32's rounding of sums in another order; the thread orders give the
    same numbers bit for bit (no kernel races)."""
    emu, cpu, params, x, y = resnet
    feed = {"image": x, "labels": y.astype(np.float32)}
    ref = run_reference(emu.plan.graph, feed, params)
    loss_cpu, grads_cpu = cpu.loss_and_grads(x, y)
    module = module_of(emu)
    runs = {}
    try:
        for order in ORDERS:
            module.order = order
            runs[order] = emu.loss_and_grads(x, y)
    finally:
        module.order = "forward"
    loss, grads = runs["forward"]
    assert loss == pytest.approx(float(ref["loss"]), rel=1e-5)
    assert loss == pytest.approx(loss_cpu, rel=1e-5)
    assert set(grads) == set(grads_cpu) == set(emu.trainable)
    for name, g in grads.items():
        assert type(g) is np.ndarray and g.shape == params[name].shape
        assert_close(g, ref[f"grad:{name}"].reshape(g.shape), 1e-5, name)
        assert_close(g, grads_cpu[name], 2e-5, name)
    for order in ORDERS[1:]:
        assert runs[order][0] == loss
        for name, g in grads.items():
            np.testing.assert_array_equal(runs[order][1][name], g, err_msg=f"{order} {name}")
    np.testing.assert_array_equal(emu.params["conv1.weight"], params["conv1.weight"])


def test_every_step_is_within_its_error_bound_in_a_shuffled_order(resnet):
    emu, _, params, x, y = resnet
    module = module_of(emu)
    module.order = "shuffled"
    try:
        rows = check_plan(emu.plan, emu.executor, params,
                          {"image": x, "labels": y.astype(np.float32)})
    finally:
        module.order = "forward"
    assert len([r for r in rows if r.lowering != "view"]) > 40
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


def test_train_steps_give_the_cpus_losses_and_parameters(resnet):
    """Three SGD-with-momentum steps from the same weights: the losses agree to 1e-5 relative
    (the gradients agree to float32 rounding of reordered sums, about 1e-6 relative here, and
    three steps of lr 0.05 move the loss by far less than they do); the parameters, the
    momentum buffers and the running statistics read back to the host agree as the gradients
    do. Both models are reset after."""
    emu, cpu, params, x, y = resnet
    try:
        losses = [(emu.train_step(x, y), cpu.train_step(x, y)) for _ in range(3)]
        for got, want in losses:
            assert got == pytest.approx(want, rel=1e-5)
        assert losses[2][0] < losses[0][0]  # it learns
        p_emu, p_cpu = emu.params, cpu.params
        assert set(p_emu) == set(p_cpu)
        for name, v in p_emu.items():
            assert_close(v, p_cpu[name], 1e-5, name)
        assert not np.array_equal(p_emu["dense1.weight"], params["dense1.weight"])
        mean = "batchnorm1.running_mean"
        assert not np.array_equal(p_emu[mean], params[mean])
        state_emu, state_cpu = emu.checkpoint_state(), cpu.checkpoint_state()
        assert_close(state_emu["optimizer/momentum"], state_cpu["optimizer/momentum"], 1e-5,
                     "momentum")
        assert int(state_emu["optimizer_steps"]) == 3
    finally:
        for tm in (emu, cpu):
            tm.set_params(params)
            tm.optimizer.state.clear()
            tm.optimizer.step_count = tm.steps_taken = 0


def test_a_step_leaves_the_parameters_and_their_packed_constants_on_the_device(resnet):
    """The constants that only move values of the parameters or the running statistics (the
    convolutions' packed weights, batch norm's weight and bias, the dense layer's weights,
    the running updates' statistics) are gathered on the device: a step's traffic over the
    (emulated) bus is the batch and its labels up, the loss, the scores and the gradients'
    per-block norms down, not the parameters (1391 floats here), the running statistics nor
    the packed constants (about twice as many); after the steps every gathered constant
    equals what the host's packing of the downloaded parameters gives (an executor of the
    same plan without the gather)."""
    emu, _, params, x, y = resnet
    memory, device = emu.memory, emu.executor.device
    n_params = emu.flat_params.size
    packed = [i for i, step in enumerate(emu.plan.steps) if step.pack]
    assert device.steps == frozenset(packed) and device.buffer.size > 1.5 * n_params
    assert not device.host_reads  # no packer on the host reads a trained value
    try:
        emu.train_step(x, y)
        up, down = memory.uploaded, memory.downloaded
        emu.train_step(x, y)
        assert memory.uploaded - up == x.nbytes + 4 * y.size  # labels as float32
        scores = sum(v.size for v in emu.last_scores.values())
        assert memory.downloaded - down == 4 * (1 + scores + block_count(n_params))
        fresh = Executor(emu.plan)
        fresh.set_params(emu.params)
        for index in device.steps:
            for name, value in emu.executor.consts[index].items():
                np.testing.assert_array_equal(memory.download(value),
                                              memory.download(fresh.consts[index][name]),
                                              err_msg=f"{emu.plan.steps[index].name} {name}")
    finally:
        emu.set_params(params)
        emu.optimizer.state.clear()
        emu.optimizer.step_count = emu.steps_taken = 0


def test_a_checkpoint_restores_the_optimizer_state_on_the_device(resnet, tmp_path):
    """Two steps, a checkpoint, a third step; restored from the checkpoint, the third step
    again gives the same loss and parameters bit for bit (momentum uploaded again), and the
    saved weights and the inference model read the device's parameters back."""
    emu, _, params, x, y = resnet
    try:
        emu.train_step(x, y)
        emu.train_step(x, y)
        state = emu.checkpoint_state()
        third = emu.train_step(x, y)
        after = emu.params
        emu.restore(state, "the checkpoint")
        assert emu.train_step(x, y) == third
        for name, v in emu.params.items():
            np.testing.assert_array_equal(v, after[name], err_msg=name)
        emu.save_weights(tmp_path / "w.npz")
        saved = np.load(tmp_path / "w.npz")
        np.testing.assert_array_equal(saved["dense1.weight"], after["dense1.weight"])
        model = emu.inference(target="cuda-emu", cache_dir=tmp_path)
        ref = run_reference(emu.graph, {"image": x}, after)["logits"]
        assert np.abs(model(x) - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    finally:
        emu.set_params(params)
        emu.optimizer.state.clear()
        emu.optimizer.step_count = emu.steps_taken = 0


@pytest.mark.parametrize("source, batch", [(WIDE, 3), (SIAMESE, 2)])
def test_every_training_op_runs_as_cuda_within_its_error_bound(source, batch, tmp_path):
    """Batch norm in training with its running updates, prelu, dropout (the int64 hash of a
    seed past 2^31, bit for bit the reference's mask: a wrong one fails the bound), group
    norm, LRN, bilinear upsampling, reflect and edge padding, channel slices, shared weights,
    instance norm, the distance and mse losses: every forward and backward step."""
    rng = np.random.default_rng(3)
    graph = cnnc.load(source)
    tm = cnnc.compile(graph, weights=random_params(graph, rng), mode="train", loss="mse",
                      target="cuda-emu", cache_dir=tmp_path)
    feed = training_feed(tm, batch, rng)
    rows = check_plan(tm.plan, tm.executor, tm.params, feed)
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
    if "dropout" in source:
        assert "dropout_train" in {r.op for r in rows}
        assert "const long long* x1" in tm.plan.listing
    if nvrtc_library() is not None:
        nvrtc_front_end(tm.plan.listing)


SPLIT = """network split_grad
input image: 3 x 20 x 30
image -> conv(5, 3, pad=1) -> relu -> conv(4, 3, stride=2, pad=(0, 1)) -> relu
      -> globalavgpool -> flatten -> dense(3) -> output scores
"""


def test_weight_gradients_split_over_pixel_ranges_equal_the_reference(tmp_path):
    """Layers of one tile and 600 and 150 pixels: the first's weight gradient runs as three
    pixel ranges whose partial gradients are added after (``weight_grad_splits``), the
    second as one; both within their error bounds of the float64 gradient, in every order."""
    rng = np.random.default_rng(5)
    graph = cnnc.load(SPLIT)
    tm = cnnc.compile(graph, weights=random_params(graph, rng), mode="train", loss="mse",
                      target="cuda-emu", cache_dir=tmp_path)
    grads = [s for s in tm.plan.steps if s.op == "conv_weight_grad"]
    assert sorted(len(s.calls) for s in grads) == [1, 2]  # one split, and three added
    assert {s.lowering for s in grads} == {"implicit_gemm"}
    feed = training_feed(tm, 2, rng)
    module = module_of(tm)
    try:
        for order in ORDERS:
            module.order = order
            rows = [r for r in check_plan(tm.plan, tm.executor, tm.params, feed)
                    if r.op == "conv_weight_grad"]
            assert len(rows) == 2 and all(r.ok for r in rows), format_rows(rows, 1.0)
    finally:
        module.order = "forward"


class Alone:
    """A group of one replica (``runtime.replicas.Replicas``)."""

    rank, size = 0, 1

    def average(self, values: np.ndarray) -> None:
        pass


def test_gpu_training_refusals_say_why(resnet, tmp_path):
    emu, *_ = resnet
    with pytest.raises(TrainingError, match="replicas average host arrays"):
        emu.set_replicas(Alone())
    with pytest.raises(TrainingError, match="sync_bn_replicas needs data-parallel replicas"):
        cnnc.compile(RESNET, mode="train", target="cuda-emu", sync_bn_replicas=2,
                     cache_dir=tmp_path)
    # the weight gradient's direct kernels index per-thread scratch: CPU targets only
    with pytest.raises(TrainingError, match="lowering direct runs on CPU targets only"):
        cnnc.compile(RESNET, mode="train", target="cuda-emu", cache_dir=tmp_path,
                     lowering={"basic1.conv1.grad.weight": "direct"})
