"""Weights and input arrays from files: every damaged, foreign or unusable file gets a clean
error naming the file (and the key or input), never a BadZipFile / EOFError / TypeError."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnc.dsl.builder import load_network
from cnnc.runtime.cli import main
from cnnc.runtime.cli_common import CliError, load_inputs
from cnnc.runtime.reference import InputError, check_inputs, run_reference
from cnnc.runtime.weights import WeightsError, init_params, load_weights, save_weights

NET = """network tiny
input image: 2 x 5 x 5
image -> conv(3, 3, pad=same) -> relu -> flatten -> dense(4) -> output logits
"""


@pytest.fixture(scope="module")
def graph():
    return load_network(NET)


@pytest.fixture(scope="module")
def good_bytes(graph) -> bytes:
    f = io.BytesIO()
    save_weights(init_params(graph, seed=1), f)
    return f.getvalue()


def _load(graph, tmp_path, data: bytes, name: str = "w.npz"):
    path = tmp_path / name
    path.write_bytes(data)
    return load_weights(graph, path), path


@pytest.mark.parametrize("cut", [0, 4, 30, 100, "half", -22, -1])
def test_truncated_npz_names_the_file(graph, good_bytes, tmp_path, cut):
    n = len(good_bytes) // 2 if cut == "half" else cut
    with pytest.raises(WeightsError, match=r"w\.npz"):
        _load(graph, tmp_path, good_bytes[:n])


def test_empty_and_junk_npz_name_the_file(graph, tmp_path):
    with pytest.raises(WeightsError, match=r"w\.npz: the file is empty"):
        _load(graph, tmp_path, b"")
    with pytest.raises(WeightsError, match=r"w\.npz: not an \.npz archive"):
        _load(graph, tmp_path, b"this is not a zip archive\n" * 10)


def _member_data_offset(data: bytes, key: str) -> tuple[int, int]:
    """(offset, size) of a stored member's bytes inside the archive."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(key + ".npy")
    header = data[info.header_offset:info.header_offset + 30]
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def test_crc_damaged_npz_names_the_file_and_key(graph, good_bytes, tmp_path):
    start, size = _member_data_offset(good_bytes, "dense1.weight")
    data = bytearray(good_bytes)
    data[start + size - 3] ^= 0x40  # inside the array data: the header still parses
    with pytest.raises(WeightsError, match=r"w\.npz: key 'dense1\.weight': damaged.*CRC"):
        _load(graph, tmp_path, bytes(data))


def test_npy_named_npz_says_what_it_is(graph, tmp_path):
    f = io.BytesIO()
    np.save(f, np.zeros(3, np.float32))
    with pytest.raises(WeightsError, match=r"w\.npz is a single \.npy array, not an \.npz"):
        _load(graph, tmp_path, f.getvalue())


@pytest.mark.parametrize("value, words", [
    (np.array([object()] * 3, dtype=object), "holds Python objects"),
    (np.array(["1.5", "2", "3"]), "holds text"),
    (np.ones(3, np.complex64), "holds complex numbers"),
    (np.ones(3, bool), "holds booleans"),
    (np.array([1e300, 0, 0]), "beyond float32's range"),
    (np.array([np.nan, 0, 0]), "NaN or infinity"),
])
def test_non_real_or_out_of_range_weights_name_the_key(graph, tmp_path, value, words):
    params = {k: np.asarray(v) for k, v in init_params(graph).items()}
    params["conv1.bias"] = value
    f = io.BytesIO()
    np.savez(f, **params)  # np.savez pickles object arrays; loading never unpickles
    with pytest.raises(WeightsError, match=rf"conv1\.bias: .*{words}"):
        _load(graph, tmp_path, f.getvalue())


def test_big_endian_weights_are_read_as_native_float32(graph, tmp_path):
    params = init_params(graph, seed=2)
    f = io.BytesIO()
    np.savez(f, **{k: v.astype(">f4") for k, v in params.items()})
    values, _ = _load(graph, tmp_path, f.getvalue())
    for k, v in params.items():
        assert values[k].dtype == np.float32 and values[k].dtype.isnative
        np.testing.assert_array_equal(values[k], v)


def test_header_shape_is_checked_before_the_data_is_read(graph, tmp_path):
    """A header that claims a huge array is refused by shape, not by a MemoryError."""
    params = init_params(graph)
    f = io.BytesIO()
    np.savez(f, **params)
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(f.getvalue())) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if info.filename == "dense1.bias.npy":
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    head, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
                dst.writestr(info.filename, head.getvalue() + b"\0" * 16)
            else:
                dst.writestr(info, src.read(info))
    with pytest.raises(WeightsError, match=r"dense1\.bias: shape 1000000000000, expected 4"):
        _load(graph, tmp_path, buf.getvalue())


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mutated_npz_loads_cleanly_or_fails_cleanly(graph, good_bytes, tmp_path_factory, data):
    """Byte-level mutations of a good archive: either sound weights or a WeightsError."""
    raw = bytearray(good_bytes)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1), label="position")
        raw[i] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(raw)), label="length")
    tmp = tmp_path_factory.mktemp("mut")
    try:
        values, _ = _load(graph, tmp, bytes(raw[:cut]))
    except WeightsError as e:
        assert "w.npz" in str(e)
    else:
        assert set(values) == {n.name for n in graph.params()}
        assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in values.values())


def test_cli_reports_damaged_weights_without_internal_error(graph, good_bytes, tmp_path,
                                                          capsys):
    model = tmp_path / "tiny.cnn"
    model.write_text(NET)
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 5, 5), np.float32))
    (tmp_path / "w.npz").write_bytes(good_bytes[: len(good_bytes) // 2])
    rc = main(["run", str(model), "--input", str(tmp_path / "x.npy"), "--weights",
               str(tmp_path / "w.npz"), "--reference"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot read weights from") and "w.npz" in err
    assert "internal error" not in err


# -- inputs ---------------------------------------------------------------------------------

def test_big_endian_input_is_refused_by_check_inputs_with_the_fix(graph):
    x = np.zeros((1, 2, 5, 5), ">f4")
    with pytest.raises(InputError, match=r"input 'image' is stored in non-native .*>f4.*"
                                         r"astype\(np\.float32\)"):
        check_inputs(graph, {"image": x}, dtypes=(np.float32,))


def test_big_endian_npy_input_runs_like_native(graph, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.save(tmp_path / "big.npy", x.astype(">f4"))
    inputs = load_inputs([str(tmp_path / "big.npy")], graph)
    assert inputs["image"].dtype.isnative
    np.testing.assert_array_equal(inputs["image"], x)
    np.testing.assert_array_equal(run_reference(graph, inputs)["logits"],
                                  run_reference(graph, {"image": x})["logits"])


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"), "damaged or truncated"),
    (lambda p: np.save(p, np.array([object()]), allow_pickle=True), "Python objects"),
    (lambda p: np.save(p, np.ones((1, 2, 5, 5), np.complex128)), "complex numbers"),
    (lambda p: p.write_bytes(b"PK\x03\x04 a zip, not a .npy"), "not a .npy file"),
])
def test_bad_npy_input_names_the_file(graph, tmp_path, make, words):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(CliError, match=rf"x\.npy.*{words}"):
        load_inputs([str(path)], graph)


def test_bad_npz_input_names_the_file_and_key(graph, tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, image=np.ones((1, 2, 5, 5), np.complex64))
    with pytest.raises(CliError, match=r"x\.npz.*image: dtype complex64"):
        load_inputs([str(path)], graph)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    with pytest.raises(CliError, match=r"x\.npz"):
        load_inputs([str(path)], graph)


def test_an_input_header_claiming_a_huge_array_is_refused_before_allocation(graph, tmp_path):
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 2, 5, 5)})
    (tmp_path / "x.npy").write_bytes(head.getvalue() + b"\0" * 64)  # magic, header, no data
    with pytest.raises(CliError, match=r"x\.npy: the header declares 200,000,000,000 bytes"):
        load_inputs([str(tmp_path / "x.npy")], graph)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("image.npy", head.getvalue() + b"\0" * 64)
    (tmp_path / "x.npz").write_bytes(buf.getvalue())
    with pytest.raises(CliError, match=r"x\.npz: key 'image': the header declares"):
        load_inputs([str(tmp_path / "x.npz")], graph)
