"""The losses beyond cross-entropy and mse, and several heads: every loss's gradient against
central finite differences in float64 (alone, at the root, and as a weighted term, where its
gradient reads the whole-batch ``dy``); the compiled float32 losses and gradients against
PyTorch's (``binary_cross_entropy_with_logits``, ``triplet_margin_loss``, Hadsell's contrastive
loss and seed 004's localization loss written out in torch); the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnc
from cnnc.compiler.autodiff import GradientError, attach_loss
from cnnc.compiler.ops import all_ops
from cnnc.dsl.builder import load_network
from cnnc.runtime.check import check_plan, format_rows
from cnnc.runtime.reference import InputError, run_reference
from cnnc.runtime.train import TrainingError
from cnnc.runtime.weights import init_params

from .gradcheck import check_gradients, random_feed, training_graph

# One trunk, three heads: class scores, five independent logits (through a sigmoid the loss
# skips), and a localization head (3 classes, then the box).
HEADS = """network heads
input x: 3 x 2 x 2
h = x -> flatten -> dense(10) as trunk -> tanh
h -> dense(4) as cls -> output cls
h -> dense(5) as multi -> sigmoid -> output multi
h -> dense(7) as loc -> output loc
"""

# Three images through one shared tower (anchor, positive, negative) and the distance of the
# first two.
TRIPLETS = """network triplets
input a: 2 x 2 x 2
input p: 2 x 2 x 2
input n: 2 x 2 x 2
block tower() {
    return in -> flatten -> dense(6) as fc1 -> tanh -> dense(4) as fc2
}
shared embed = tower()
ea = a -> embed
ep = p -> embed
en = n -> embed
output anchor = ea
output positive = ep
output negative = en
distance(ea, ep) -> output d
"""

HEAD_TERMS = [("cls", "cross_entropy", 1.0), ("multi", "bce_with_logits", 0.5),
              ("loc", "localization", 0.3, {"box_weight": 2.0})]
PAIR_TERMS = [(("anchor", "positive", "negative"), "triplet", 1.0, {"margin": 0.5}),
              ("d", "contrastive", 0.7, {"margin": 2.0})]


def labels_for(loss: str, shape: tuple[int, ...], batch: int,
               rng: np.random.Generator) -> np.ndarray:
    """Labels a loss takes, every case present: classes (localization: 0, no object, in the
    first and second sample), targets in [0, 1], pairs similar and dissimilar."""
    if loss == "cross_entropy":
        return rng.integers(0, shape[0], batch).astype(np.float64)
    if loss == "bce_with_logits":
        return rng.random((batch,) + shape)
    if loss == "weighted_sum":  # any weights: the explanations' seeds
        return rng.standard_normal((batch,) + shape)
    if loss == "contrastive":
        return (np.arange(batch) % 2).astype(np.float64).reshape(batch, 1)
    if loss == "localization":
        classes = np.array([0, 0] + list(rng.integers(1, shape[0] - 4, batch - 2)))
        return np.concatenate([classes[:, None], rng.standard_normal((batch, 4))], axis=1)
    raise AssertionError(loss)


# -- gradients against finite differences (float64, reference interpreter) ----------------------

@pytest.mark.parametrize("loss, output, options", [
    ("bce_with_logits", "multi", {}),
    ("localization", "loc", {"box_weight": 0.5}),
    ("triplet", ("anchor", "positive", "negative"), {"margin": 1.5}),
    ("contrastive", "d", {"margin": 2.0}),
    ("weighted_sum", "loc", {}),
])
def test_each_loss_at_the_root_against_finite_differences(loss, output, options):
    rng = np.random.default_rng(3)
    source = TRIPLETS if loss in ("triplet", "contrastive") else HEADS
    tg = training_graph(source, loss, output, **options)
    assert tg.node(tg.outputs["loss"]).op == loss  # the root: no dy input
    feed, params = random_feed(tg, 4, rng)
    if "labels" in feed:
        scores = tg.node(tg.node(tg.outputs["loss"]).inputs[0]).type.shape
        feed["labels"] = labels_for(loss, scores, 4, rng)
    assert check_gradients(tg, feed, params, rng) > 0


@pytest.mark.parametrize("source, terms", [(HEADS, HEAD_TERMS), (TRIPLETS, PAIR_TERMS)])
def test_weighted_terms_against_finite_differences(source, terms):
    """Each term's gradient reads dy = its weight (``loss_weight``); the gradients of the
    heads meet in the trunk (the towers: in the shared weights)."""
    rng = np.random.default_rng(4)
    tg = training_graph(source, terms)
    losses = {t[1] for t in terms}
    grads = [n for n in tg.nodes() if n.op.removesuffix("_grad") in losses and
             n.op.endswith("_grad")]
    assert {n.op.removesuffix("_grad") for n in grads} == losses
    for n in grads:  # dy, not the root's 1
        assert tg.node(n.inputs[-1]).op == "loss_weight", n.op
    feed, params = random_feed(tg, 4, rng)
    for t in terms:
        name = f"labels:{t[0] if isinstance(t[0], str) else t[0][0]}"
        if name in feed:
            loss_node = tg.users(tg.inputs[name])[0]
            feed[name] = labels_for(t[1], tg.node(loss_node.inputs[0]).type.shape, 4, rng)
    assert check_gradients(tg, feed, params, rng) > 0


def test_the_weighted_sum_is_the_sum_of_its_terms():
    """The reference loss of the terms equals each loss alone, weighted and added."""
    rng = np.random.default_rng(5)
    graph = load_network(HEADS)
    tg = attach_loss(graph, HEAD_TERMS)
    feed, params = random_feed(tg, 3, rng)
    total = 0.0
    for output, loss, weight, *options in HEAD_TERMS:
        one = attach_loss(graph, loss, output, **(options[0] if options else {}))
        feed[f"labels:{output}"] = labels_for(
            loss, one.node(one.node(one.outputs["loss"]).inputs[0]).type.shape, 3, rng)
        alone = {"x": feed["x"], "labels": feed[f"labels:{output}"]}
        total += weight * float(run_reference(one, alone, params)["loss"])
    assert float(run_reference(tg, feed, params)["loss"]) == pytest.approx(total, rel=1e-12)


# -- the compiled losses against PyTorch --------------------------------------------------------

def torch_params(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
            for k, v in params.items()}


def torch_heads(p: dict[str, torch.Tensor], x: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """HEADS in torch: the outputs the losses read (``multi`` before its sigmoid)."""
    h = torch.tanh(F.linear(torch.tensor(x["x"], dtype=torch.float64).flatten(1),
                            p["trunk.weight"], p["trunk.bias"]))
    return {name: F.linear(h, p[f"{name}.weight"], p[f"{name}.bias"])
            for name in ("cls", "multi", "loc")}


def torch_triplets(p: dict[str, torch.Tensor], x: dict[str, np.ndarray]
                   ) -> dict[str, torch.Tensor]:
    def embed(v: np.ndarray) -> torch.Tensor:
        h = torch.tensor(v, dtype=torch.float64).flatten(1)
        h = torch.tanh(F.linear(h, p["embed.fc1.weight"], p["embed.fc1.bias"]))
        return F.linear(h, p["embed.fc2.weight"], p["embed.fc2.bias"])
    out = {role: embed(x[k]) for k, role in zip("apn", ("anchor", "positive", "negative"))}
    out["d"] = torch.linalg.vector_norm(out["anchor"] - out["positive"], dim=1, keepdim=True)
    return out


def hadsell_contrastive(d: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell, Chopra and LeCun (2006), eq. 4: Y = 0 similar, 1 dissimilar; batch mean."""
    return ((1 - y) * d ** 2 / 2 + y * torch.clamp(margin - d, min=0) ** 2 / 2).mean()


def seed_localization(out: torch.Tensor, labels: torch.Tensor, box_weight: float
                      ) -> torch.Tensor:
    """Seed 004: cross-entropy of the class scores plus gamma (1 - y_1) times the box's mean
    squared error (class 0: nothing there), batch mean."""
    classes = labels[:, 0].long()
    present = (classes != 0).double()
    box = ((out[:, -4:] - labels[:, 1:]) ** 2).mean(dim=1)
    return F.cross_entropy(out[:, :-4], classes) + box_weight * (present * box).mean()


def torch_term(outputs: dict[str, torch.Tensor], term: tuple, labels: np.ndarray | None
               ) -> torch.Tensor:
    output, loss, weight, *rest = term
    options = rest[0] if rest else {}
    t = torch.tensor(labels, dtype=torch.float64) if labels is not None else None
    if loss == "cross_entropy":
        value = F.cross_entropy(outputs[output], t.long())
    elif loss == "bce_with_logits":
        value = F.binary_cross_entropy_with_logits(outputs[output], t)
    elif loss == "localization":
        value = seed_localization(outputs[output], t, options.get("box_weight", 1.0))
    elif loss == "contrastive":
        value = hadsell_contrastive(outputs[output], t, options.get("margin", 1.0))
    else:
        a, p, n = (outputs[name] for name in output)
        value = F.triplet_margin_loss(a, p, n, margin=options.get("margin", 1.0), p=2)
    return weight * value


#: The loss family's ops: the losses, their gradients, the weighted sum and its gradient.
LOSS_OPS = {name for name, op in all_ops().items() if op.family == "loss"}

CASES = {  # name: network, its torch twin, terms, whether they are one loss alone
    "bce alone": (HEADS, torch_heads, [("multi", "bce_with_logits", 1.0, {})], True),
    "localization alone": (HEADS, torch_heads,
                           [("loc", "localization", 1.0, {"box_weight": 0.5})], True),
    "triplet alone": (TRIPLETS, torch_triplets,
                      [(("anchor", "positive", "negative"), "triplet", 1.0, {"margin": 2.0})],
                      True),
    "three heads": (HEADS, torch_heads, HEAD_TERMS, False),
    "triplet and contrastive": (TRIPLETS, torch_triplets, PAIR_TERMS, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_losses_match_pytorch(case):
    source, twin, terms, alone = CASES[case]
    rng = np.random.default_rng(6)
    graph = cnnc.load(source)
    params = {k: (rng.standard_normal(v.shape) * 0.7).astype(np.float32)
              for k, v in init_params(graph).items()}
    batch = 5
    x = {name: rng.standard_normal((batch,) + graph.node(nid).type.shape).astype(np.float32)
         for name, nid in graph.inputs.items()}
    outputs = twin(torch_params(params), x)
    labels = {}
    for output, loss, *_ in terms:
        if loss != "triplet":
            labels[output] = labels_for(loss, tuple(outputs[output].shape[1:]), batch, rng)
    if alone:
        (output, loss, _, options), = terms
        tm = cnnc.compile(graph, weights=params, mode="train", loss=loss, output=output,
                          loss_options=options)
        y = labels.get(output)
    else:
        tm = cnnc.compile(graph, weights=params, mode="train", loss=terms)
        y = labels
    got, grads = tm.loss_and_grads(x, y)
    p = torch_params(params)
    outputs = twin(p, x)
    want = sum(torch_term(outputs, t, labels.get(t[0])) for t in terms)
    want.backward()
    assert got == pytest.approx(want.item(), rel=1e-5)
    assert set(grads) == {n for n, t in p.items() if t.grad is not None}  # the ones it reads
    # relative to the largest gradient: a bias the triplet loss cancels has only rounding
    scale = max(float(p[name].grad.abs().max()) for name in grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, p[name].grad.numpy(), rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)
    # and the losses' and their gradients' kernels, step by step, within their error bounds
    feed = dict(x)
    if alone:
        feed.update({"labels": y.astype(np.float32)} if y is not None else {})
    else:
        feed.update({f"labels:{k}": v.astype(np.float32) for k, v in labels.items()})
    rows = [r for r in check_plan(tm.plan, tm.executor, tm.params, feed) if r.op in LOSS_OPS]
    assert {t[1] for t in terms} | {f"{t[1]}_grad" for t in terms} <= {r.op for r in rows}
    assert all(r.ok for r in rows), format_rows(rows, 1.0)


# -- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("loss, output, options, message", [
    ("triplet", "anchor", {}, r"loss 'triplet' reads 3 outputs, given anchor"),
    ("triplet", None, {}, r"has 4 outputs .*name the 3 the loss reads"),
    ("localization", "d", {}, r"localization needs outputs \[K \+ 4\]"),
    ("contrastive", "d", {"margin": -1.0}, r"margin must be at least 0"),
    ("contrastive", "d", {"p": 2}, r"loss 'contrastive' takes margin, not p"),
    ([("d", "contrastive"), ("d", "mse")], None, {}, r"output 'd' is read by two loss terms"),
    ([("d", "contrastive", "heavy")], None, {}, r"weight of loss term .* finite number"),
    ([("d", "hinge")], None, {}, r"unknown loss 'hinge'"),
    ([], None, {}, r"the list of loss terms is empty"),
    ([("d", "contrastive")], "d", {}, r"give each term's output and options in its tuple"),
])
def test_losses_that_do_not_fit_are_refused(loss, output, options, message):
    with pytest.raises(GradientError, match=message):
        attach_loss(load_network(TRIPLETS), loss, output, **options)


@pytest.fixture(scope="module")
def heads_model():
    graph = cnnc.load(HEADS)
    return cnnc.compile(graph, mode="train", loss=HEAD_TERMS)


def test_bad_labels_of_several_heads_are_refused(heads_model):
    tm = heads_model
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    good = {"cls": np.array([0, 3]), "multi": rng.random((2, 5)),
            "loc": np.array([[0, 0, 0, 0, 0], [2, 0.1, 0.2, 0.3, 0.4]])}
    assert np.isfinite(tm.loss_and_grads(x, good)[0])
    for bad, message in (
            ({**good, "multi": good["multi"] + 1.0}, r"labels:multi: bce_with_logits targets "
                                                     r"must be in \[0, 1\]; got"),
            ({**good, "loc": good["loc"] + [[3, 0, 0, 0, 0], [0] * 5]},
             r"labels:loc: labels must be class indices 0\.\.2; got 3"),
            ({"cls": good["cls"]}, r"labels are needed for outputs cls, multi, loc"),
            (good["cls"], r"input 'labels:multi' has shape 2, expected N x 5")):
        with pytest.raises(InputError, match=message):  # TrainingError is one
            tm.loss_and_grads(x, bad)
    with pytest.raises(TrainingError, match="contrastive labels must be 0 .* or 1"):
        pairs = cnnc.compile(TRIPLETS, mode="train", loss="contrastive", output="d")
        feed = {k: rng.standard_normal((2, 2, 2, 2)).astype(np.float32) for k in "apn"}
        pairs.loss_and_grads(feed, np.array([[1.0], [0.5]]))


# -- the localization loss on a grid (a YOLO-style detector's head) -------------------------------

GRID = """network grid
input x: 3 x 4 x 3
x -> conv(7, 3, pad=1) as head -> output g
"""


def grid_labels(rng: np.random.Generator, batch: int) -> np.ndarray:
    """Per cell: the class (0, nothing there, in about half the cells) and a box."""
    classes = rng.integers(0, 3, (batch, 1, 4, 3)) * (rng.random((batch, 1, 4, 3)) < 0.5)
    return np.concatenate([classes, rng.standard_normal((batch, 4, 4, 3))], axis=1)


def test_localization_on_a_grid_against_finite_differences():
    rng = np.random.default_rng(8)
    tg = training_graph(GRID, "localization", box_weight=0.5)
    feed, params = random_feed(tg, 3, rng)
    feed["labels"] = grid_labels(rng, 3)
    assert check_gradients(tg, feed, params, rng) > 0


def test_localization_on_a_grid_matches_pytorch_per_cell():
    """Seed 004's loss of every cell, as rows of one batch: the mean over images and cells."""
    rng = np.random.default_rng(9)
    graph = cnnc.load(GRID)
    params = {k: (rng.standard_normal(v.shape) * 0.7).astype(np.float32)
              for k, v in init_params(graph).items()}
    x = rng.standard_normal((3, 3, 4, 3)).astype(np.float32)
    labels = grid_labels(rng, 3)
    tm = cnnc.compile(graph, weights=params, mode="train", loss="localization",
                      loss_options={"box_weight": 0.5})
    got, grads = tm.loss_and_grads({"x": x}, labels)
    p = torch_params(params)
    out = F.conv2d(torch.tensor(x, dtype=torch.float64), p["head.weight"], p["head.bias"],
                   padding=1)
    want = seed_localization(out.permute(0, 2, 3, 1).reshape(-1, 7),
                             torch.tensor(labels).permute(0, 2, 3, 1).reshape(-1, 5), 0.5)
    want.backward()
    assert got == pytest.approx(want.item(), rel=1e-5)
    for name, g in grads.items():
        np.testing.assert_allclose(g, p[name].grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    feed = {"x": x, "labels": labels.astype(np.float32)}
    rows = [r for r in check_plan(tm.plan, tm.executor, tm.params, feed) if r.op in LOSS_OPS]
    assert {"localization", "localization_grad"} <= {r.op for r in rows}
    assert all(r.ok for r in rows), format_rows(rows, 1.0)
