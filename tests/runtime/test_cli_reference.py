"""`cnnc run --reference` and `cnnc summary` end to end through the CLI entry point."""

import numpy as np

from cnnc.dsl.builder import load_network
from cnnc.runtime.cli import main
from cnnc.runtime.reference import run_reference
from cnnc.runtime.weights import init_params, save_weights

NET = """network tiny(classes = 5)
input image: 2 x 9 x 9
image -> conv(3, 3, stride=2, pad=same) -> relu -> maxpool(2, ceil_mode=true)
      -> flatten -> dense(classes) -> output logits
"""


def test_run_reference_with_weights_matches_the_interpreter(tmp_path, capsys):
    model = tmp_path / "tiny.cnn"
    model.write_text(NET)
    graph = load_network(str(model))
    params = init_params(graph, seed=3)
    save_weights(params, tmp_path / "w.npz")
    x = np.random.default_rng(0).standard_normal((2, 2, 9, 9)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rc = main(["run", str(model), "--input", str(tmp_path / "x.npy"), "--weights",
               str(tmp_path / "w.npz"), "--reference", "-o", str(tmp_path / "out.npz")])
    assert rc == 0
    out = np.load(tmp_path / "out.npz")["logits"]
    expected = run_reference(graph, {"image": x}, params)["logits"]
    np.testing.assert_array_equal(out, expected)
    assert "top-5" in capsys.readouterr().out


def test_run_rejects_weights_of_the_wrong_shape_listing_every_problem(tmp_path, capsys):
    model = tmp_path / "tiny.cnn"
    model.write_text(NET)
    graph = load_network(str(model))
    params = init_params(graph)
    params["conv1.weight"] = params["conv1.weight"][:2]
    del params["dense1.bias"]
    params["extra"] = np.zeros(3, np.float32)
    save_weights(params, tmp_path / "w.npz")
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 9, 9), np.float32))
    rc = main(["run", str(model), "--input", str(tmp_path / "x.npy"), "--weights",
               str(tmp_path / "w.npz"), "--reference"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "3 problems" in err
    assert "conv1.weight: shape 2x2x3x3, expected 3x2x3x3" in err
    assert "missing dense1.bias (5)" in err
    assert "unknown parameter extra" in err
    assert "Traceback" not in err


def test_run_rejects_an_input_of_the_wrong_shape(tmp_path, capsys):
    model = tmp_path / "tiny.cnn"
    model.write_text(NET)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 9, 9), np.float32))
    rc = main(["run", str(model), "--input", str(tmp_path / "x.npy"), "--reference"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "input 'image' has shape 1 x 3 x 9 x 9, expected N x 2 x 9 x 9" in err


def test_param_override_changes_the_network(capsys):
    assert main(["summary", "resnet18", "--param", "classes=10"]) == 0
    out = capsys.readouterr().out
    assert "total parameters:   11,181,642" in out  # 11,689,512 - 512*990 - 990
