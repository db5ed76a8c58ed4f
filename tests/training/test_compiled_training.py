"""The compiled training step against PyTorch: the same network and weights, the loss and
every parameter's gradient from ``loss_and_grads`` (written by the kernels into the flat
gradient buffer), and the parameters after SGD-with-momentum, Adam and AdamW steps, with
clipping and schedules; LeNet-5 trained from scratch on the digits; the command's refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnc
from cnnc.compiler.ops import evaluate
from cnnc.runtime.cli import main
from cnnc.runtime.model import ModelError
from cnnc.runtime.optim import Schedule
from cnnc.runtime.train import TrainingError
from cnnc.runtime.weights import init_params

NET = """network small
input image: 3 x 9 x 9
a = image -> conv(4, 3, stride=2, pad=(1, 0, 1, 1)) as c1 -> relu
b = a -> conv(4, 3, pad=1) as c2 -> tanh
add(a, b) -> maxpool(2, ceil_mode=true) -> conv(5, 1) as c3 -> sigmoid -> avgpool(2, pad=1)
  -> flatten -> dense(3) as fc -> output scores
"""


def torch_loss(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    t = F.pad(torch.tensor(x, dtype=torch.float64), (0, 1, 1, 1))  # left, right, top, bottom
    a = F.relu(F.conv2d(t, p["c1.weight"], p["c1.bias"], stride=2))
    b = torch.tanh(F.conv2d(a, p["c2.weight"], p["c2.bias"], padding=1))
    h = F.max_pool2d(a + b, 2, ceil_mode=True)
    h = torch.sigmoid(F.conv2d(h, p["c3.weight"], p["c3.bias"]))
    h = F.avg_pool2d(h, 2, padding=1)
    scores = F.linear(h.flatten(1), p["fc.weight"], p["fc.bias"])
    loss = F.cross_entropy(scores, torch.tensor(y, dtype=torch.long))
    return loss, p


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    graph = cnnc.load(NET)
    params = {k: (rng.standard_normal(v.shape) * 0.5).astype(np.float32)
              for k, v in init_params(graph).items()}
    x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    y = np.array([0, 2, 1, 2])
    return graph, params, x, y


def test_loss_and_grads_match_pytorch_autograd(small):
    graph, params, x, y = small
    tm = cnnc.compile(graph, weights=params, mode="train", loss="cross_entropy")
    loss, grads = tm.loss_and_grads(x, y)
    ref, p = torch_loss(params, x, y)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    assert set(grads) == set(params)
    for name, g in grads.items():
        want = p[name].grad.numpy()
        assert g.shape == want.shape
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                   err_msg=name)
    np.testing.assert_array_equal(tm.params["c1.weight"], params["c1.weight"])  # no update


@pytest.mark.parametrize("kind, options, torch_opt", [
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01, "nesterov": True},
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("adam", {"weight_decay": 0.01},
     lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.01)),
    ("adamw", {"weight_decay": 0.01},
     lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.01)),
])
def test_train_steps_match_pytorch_optimizers(small, kind, options, torch_opt):
    graph, params, x, y = small
    tm = cnnc.compile(graph, weights=params, mode="train", optimizer=kind, lr=0.1, **options)
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = torch_opt(list(p.values()))
    for _ in range(3):
        tm.train_step(x, y)
        opt.zero_grad()
        loss, q = torch_loss({k: v.detach().numpy() for k, v in p.items()}, x, y)
        loss.backward()
        for k in p:
            p[k].grad = q[k].grad
        opt.step()
    for name, value in tm.params.items():
        np.testing.assert_allclose(value, p[name].detach().numpy(), rtol=2e-4, atol=2e-5,
                                   err_msg=f"{kind}: {name}")


@pytest.mark.parametrize("kind, options, torch_opt, clip, schedule, torch_schedule", [
    ("sgd", {"momentum": 0.9}, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 0.05,
     Schedule("step", step_size=1, gamma=0.5),
     lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)),
    ("adam", {"weight_decay": 0.01}, lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.01),
     0.05, Schedule("cosine"),
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)),
    ("adamw", {"weight_decay": 0.01}, lambda ps: torch.optim.AdamW(ps, lr=0.1,
                                                                   weight_decay=0.01),
     None, Schedule("constant", warmup=2),
     lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 2))),
])
def test_clipping_and_schedules_match_pytorch(small, kind, options, torch_opt, clip, schedule,
                                             torch_schedule):
    """Three steps with the learning rate of a schedule (against PyTorch's scheduler), the
    gradients clipped by their global norm (``clip_grad_norm_``: here always over the limit)."""
    graph, params, x, y = small
    tm = cnnc.compile(graph, weights=params, mode="train", optimizer=kind, lr=0.1,
                      clip_norm=clip, **options)
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = torch_opt(list(p.values()))
    lrs = torch_schedule(opt)
    for t in range(3):
        tm.train_step(x, y, lr=schedule.lr(0.1, t, 3))
        opt.zero_grad()
        loss, q = torch_loss({k: v.detach().numpy() for k, v in p.items()}, x, y)
        loss.backward()
        for k in p:
            p[k].grad = q[k].grad
        if clip is not None:
            assert torch.nn.utils.clip_grad_norm_(list(p.values()), clip) > clip
        opt.step()
        lrs.step()
    for name, value in tm.params.items():
        np.testing.assert_allclose(value, p[name].detach().numpy(), rtol=2e-4, atol=2e-5,
                                   err_msg=f"{kind}: {name}")


def test_the_backward_kernels_write_the_gradients_into_the_flat_buffer(small):
    """The memory plan puts the parameters' gradients one after another in one slot, and that
    slot is ``flat_grads`` for every batch size: no copy, and the right values at each."""
    graph, params, x, y = small
    tm = cnnc.compile(graph, weights=params, mode="train")
    sizes = [params[n].size for n in tm.trainable]
    offsets = [tm.plan.buffers.offset[tm.grad_outputs[n]] for n in tm.trainable]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
    assert tm.flat_grads.size == sum(sizes)
    for n in (3, 4):
        _, grads = tm.loss_and_grads(x[:n], y[:n])
        ref, p = torch_loss(params, x[:n], y[:n])
        ref.backward()
        for name, g in grads.items():
            want = p[name].grad.numpy()
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                       err_msg=f"batch {n}: {name}")
            written = tm.executor.arenas[n].value(tm.plan, tm.grad_outputs[name])
            assert np.shares_memory(written, tm.flat_grads), name
        np.testing.assert_array_equal(
            tm.flat_grads, np.concatenate([grads[k].ravel() for k in tm.trainable]))


def test_profiling_calls_times_every_kernel_and_takes_the_same_step(small):
    """``profile_calls`` times every kernel call of every plan step in plan order (a
    convolution's pack, compute and unpack apart), then the step's bookkeeping; it takes the
    step ``train_step`` takes."""
    graph, params, x, y = small
    profiled, plain = (cnnc.compile(graph, weights=params, mode="train", optimizer="sgd",
                                    lr=0.1, momentum=0.9) for _ in range(2))
    rows = profiled.profile_calls(x, y)
    want = [(s.name, call.kernel) for s in profiled.plan.steps for call in s.calls]
    assert [(r[0], r[2]) for r in rows[:-3]] == want
    assert any(r[2] == "pack_nchw_blocked" for r in rows)
    assert [r[0] for r in rows[-3:]] == ["gradients", "optimizer", "refresh"]
    assert all(r[3] >= 0 for r in rows)
    plain.train_step(x, y)
    np.testing.assert_array_equal(profiled.flat_params, plain.flat_params)
    assert profiled.train_step(x, y) == plain.train_step(x, y)


def _step_of(tm, name: str) -> int:
    return next(i for i, s in enumerate(tm.plan.steps) if s.name.split("+")[0] == name)


def test_the_refresh_after_an_update_makes_only_what_changed_again(small):
    """After an update the constants of a frozen layer are kept as they are (the same
    arrays), the others made again; and they are the very constants a model built afresh from
    the updated parameters packs, so it computes bitwise the same loss and gradients."""
    graph, params, x, y = small
    options = dict(mode="train", optimizer="sgd", lr=0.1, momentum=0.9, freeze=["c1.*"])
    tm = cnnc.compile(graph, weights=params, **options)
    frozen, trained = _step_of(tm, "c1"), _step_of(tm, "c2")
    kept, packed = dict(tm.executor.consts[frozen]), tm.executor.consts[trained]["w"]
    old = packed.copy()
    for _ in range(2):
        tm.train_step(x, y)
    assert all(tm.executor.consts[frozen][k] is v for k, v in kept.items())
    # the trained layer's packing is made again, into the memory of the last one
    assert not np.array_equal(tm.executor.consts[trained]["w"], old)
    assert np.shares_memory(tm.executor.consts[trained]["w"], packed)
    fresh = cnnc.compile(graph, weights=tm.params, **options)
    for step, got, want in zip(tm.plan.steps, tm.executor.consts, fresh.executor.consts):
        assert set(got) == set(want), step.name
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{step.name} {k}")
    loss, grads = tm.loss_and_grads(x, y)
    want_loss, want_grads = fresh.loss_and_grads(x, y)
    assert loss == want_loss
    for name in want_grads:
        np.testing.assert_array_equal(grads[name], want_grads[name], err_msg=name)


def test_bad_labels_and_options_are_refused(small):
    graph, params, x, y = small
    tm = cnnc.compile(graph, weights=params, mode="train")
    with pytest.raises(TrainingError, match=r"class indices 0\.\.2; got 3"):
        tm.loss_and_grads(x, np.array([0, 1, 3, 1]))
    with pytest.raises(TrainingError, match="optimizer must be one of"):
        cnnc.compile(graph, mode="train", optimizer="rmsprop")
    with pytest.raises(cnnc.runtime.model.ModelError, match="training options need"):
        cnnc.compile(graph, lr=0.1)


def test_lenet5_learns_the_digits(capsys, tmp_path):
    """From scratch with the command's defaults (fixed seed): at least 97% test accuracy."""
    out = tmp_path / "w.npz"
    assert main(["train", "lenet5", "--data", "digits", "--epochs", "5", "--quiet",
                 "--save", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test accuracy: ")
    assert float(last.split(": ")[1]) >= 0.97
    assert main(["train", "lenet5", "--epochs", "1", "--save", str(out)]) == 2  # no --force
    assert "pass --force" in capsys.readouterr().err


def test_input_gradient_matches_pytorch(small):
    graph, params, x, y = small
    tm = cnnc.compile(graph, weights=params, mode="train")
    got = tm.input_gradient(x, y)
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    h = F.relu(F.conv2d(F.pad(t, (0, 1, 1, 1)), p["c1.weight"], p["c1.bias"], stride=2))
    b = torch.tanh(F.conv2d(h, p["c2.weight"], p["c2.bias"], padding=1))
    h = F.max_pool2d(h + b, 2, ceil_mode=True)
    h = F.avg_pool2d(torch.sigmoid(F.conv2d(h, p["c3.weight"], p["c3.bias"])), 2, padding=1)
    F.cross_entropy(F.linear(h.flatten(1), p["fc.weight"], p["fc.bias"]),
                    torch.tensor(y)).backward()
    want = t.grad.numpy()
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_diverging_step_names_the_first_layer_that_went_non_finite(small):
    graph, params, x, y = small
    huge = {k: v * 1e30 if k == "c1.weight" else v for k, v in params.items()}
    tm = cnnc.compile(graph, weights=huge, mode="train")
    with pytest.raises(TrainingError, match=r"training step 0: the loss is \S+; the first "
                                            r"non-finite values come from layer \S+ \([\w+]+\)"):
        tm.train_step(x * 1e10, y)


@pytest.mark.parametrize("opt_level, lowering", [(0, "auto"), (2, "direct"), (2, "im2col")])
def test_every_schedule_gives_the_same_gradients(small, opt_level, lowering):
    """Schedule invariance for the backward pass: -O0 and every convolution algorithm forced
    (the forward convolutions, the input gradients and the weight gradients alike) give the
    -O2 default's loss and gradients within float32 rounding."""
    graph, params, x, y = small
    base = cnnc.compile(graph, weights=params, mode="train")
    other = cnnc.compile(graph, weights=params, mode="train", opt_level=opt_level,
                         lowering=lowering)
    loss0, grads0 = base.loss_and_grads(x, y)
    loss1, grads1 = other.loss_and_grads(x, y)
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    for name in grads0:
        scale = float(np.abs(grads0[name]).max())
        np.testing.assert_allclose(grads1[name], grads0[name], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)
    if lowering != "auto":
        convs = [n for n in other.plan.graph.nodes()
                 if n.op in ("conv", "conv_transpose", "conv_weight_grad")]
        assert {n.op for n in convs} >= {"conv", "conv_weight_grad"}
        assert convs and all(n.attrs["lowering"].startswith(lowering[:3]) or
                             n.attrs["lowering"] == "channelwise" for n in convs)


# Transfer learning: only the head trains, so the frozen backbone has no backward reader and
# its activations can stay channel-blocked between its kernels, as in inference.
HEAD = """network head
input image: 3 x 12 x 12
image -> conv(16, 3, pad=1) as c1 -> relu -> conv(32, 3, stride=2, pad=1) as c2 -> relu
  -> maxpool(2) -> globalavgpool -> flatten -> dense(5) as fc -> output scores
"""


@pytest.mark.parametrize("layout", ["NCHW8c", "NCHW16c", "NHWC"])
def test_forced_layouts_give_the_plain_layouts_gradients(layout):
    """A layout forced in training keeps the backbone's activations in it (the IR records
    it) and gives the plain layout's loss and gradients within float32 rounding."""
    rng = np.random.default_rng(5)
    graph = cnnc.load(HEAD)
    params = {k: (rng.standard_normal(v.shape) * 0.3).astype(np.float32)
              for k, v in init_params(graph).items()}
    x = rng.standard_normal((3, 3, 12, 12)).astype(np.float32)
    y = np.array([4, 0, 2])
    plain, forced = (cnnc.compile(graph, weights=params, mode="train", layout=choice,
                                  freeze=["c1.*", "c2.*"]) for choice in ("NCHW", layout))
    kept = {n.name for n in forced.plan.graph.nodes() if n.attrs.get("layout") == layout}
    assert kept == {"c1", "c2", "maxpool1"}  # the ReLUs fused into the convolutions
    assert not any(n.attrs.get("layout") for n in plain.plan.graph.nodes())
    (loss0, grads0), (loss1, grads1) = plain.loss_and_grads(x, y), forced.loss_and_grads(x, y)
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    assert set(grads1) == set(grads0) == {"fc.weight", "fc.bias"}
    for name in grads0:
        np.testing.assert_allclose(grads1[name], grads0[name], rtol=1e-4,
                                   atol=1e-5 * float(np.abs(grads0[name]).max()), err_msg=name)


def test_packing_into_the_last_packings_memory_gives_a_new_packing():
    """A convolution's packing written into an array (a training refresh reuses the last
    packing's memory) is, bit for bit, the packing made into a new array: for a layer whose
    channels fill whole blocks (one copy into place) and for the stem's 3 (padded)."""
    rng = np.random.default_rng(6)
    graph = cnnc.load(HEAD)
    params = {k: rng.standard_normal(v.shape).astype(np.float32)
              for k, v in init_params(graph).items()}
    tm = cnnc.compile(graph, weights=params, mode="train", layout="NCHW",
                      freeze=["c1.*", "c2.*"])
    values = tm.executor.parameter_values(params)
    packs = [n for n in tm.plan.graph.nodes() if n.op == "conv_pack"]
    assert {n.attrs["in_shape"][0] for n in packs} == {3, 16}
    for node in packs:
        inputs = [values[i] for i in node.inputs]
        want = evaluate(node.op, inputs, node.attrs)
        out = np.full(want.shape, np.nan, np.float32)
        assert evaluate(node.op, inputs, node.attrs, out) is out
        np.testing.assert_array_equal(out, want, err_msg=node.name)


def test_the_training_ir_dump_shows_the_decisions(small, tmp_path):
    """``dump_ir`` in training: the IR after each pass, the backward graph's decisions among
    them (each weight gradient's algorithm and tile), then the memory plan."""
    graph, params, _, _ = small
    cnnc.compile(graph, weights=params, mode="train", dump_ir=tmp_path / "ir")
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    # the training pipeline's head: batch norm's statistics made global (a no-op alone), then
    # the backward graph
    assert files[:3] == ["00-input.ir", "01-sync_batch_norm.ir", "02-autodiff.ir"]
    assert files[-1].endswith("-memory_plan.ir")
    last_pass = (tmp_path / "ir" / files[-2]).read_text()
    grads = [line for line in last_pass.splitlines() if "conv_weight_grad" in line]
    assert grads and all("lowering=" in line for line in grads)
    with pytest.raises(ModelError, match="not empty"):
        cnnc.compile(graph, weights=params, mode="train", dump_ir=tmp_path / "ir")
