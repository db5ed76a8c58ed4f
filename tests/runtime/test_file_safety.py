"""Nothing the user wrote is lost: every command that writes files refuses to replace an
existing one without --force (naming each, writing nothing), writes atomically, and names every
file it writes. Also: the CLI's shared helpers live in cli_common, which library modules use."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cnnc.compiler.passes import pipeline
from cnnc.runtime.cli import main
from cnnc.runtime.cli_common import CliError, write_files
from cnnc.runtime.model import ModelError
from cnnc.runtime.model import compile as compile_model

NET = """network tiny
input image: 2 x 5 x 5
image -> conv(3, 3, pad=same) -> relu -> flatten -> dense(4) -> output logits
"""


@pytest.fixture()
def onnx_model(tmp_path):
    pytest.importorskip("onnx")  # only the import/export tests need it
    src = tmp_path / "tiny.cnn"
    src.write_text(NET)
    assert main(["export", str(src), "-o", str(tmp_path / "net.onnx")]) == 0
    return tmp_path / "net.onnx"


def test_import_never_replaces_existing_files_without_force(onnx_model, capsys):
    folder = onnx_model.parent
    (folder / "net.cnn").write_text("my own network\n")
    (folder / "net.npz").write_bytes(b"my own weights")
    capsys.readouterr()
    assert main(["import", str(onnx_model)]) == 2
    err = capsys.readouterr().err
    assert "net.cnn" in err and "net.npz" in err and "--force" in err
    assert "nothing was written" in err
    assert (folder / "net.cnn").read_text() == "my own network\n"
    assert (folder / "net.npz").read_bytes() == b"my own weights"
    assert main(["import", str(onnx_model), "--force"]) == 0
    assert "network tiny" in (folder / "net.cnn").read_text()
    assert not [f for f in folder.iterdir() if f.name.startswith(".")]  # no temp files left


def test_import_writes_only_the_files_it_names(onnx_model, capsys):
    folder = onnx_model.parent
    before = set(folder.iterdir())
    rc = main(["import", str(onnx_model), "-o", str(folder / "mine.cnn"), "--weights-out",
               str(folder / "params.npz")])
    out = capsys.readouterr().out
    assert rc == 0
    assert set(folder.iterdir()) - before == {folder / "mine.cnn", folder / "params.npz"}
    assert f"wrote {folder / 'mine.cnn'}" in out and str(folder / "params.npz") in out


def test_import_help_names_every_file_written(capsys):
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--weights-out" in text and "the only files written" in text and "--force" in text


def test_export_run_and_emit_refuse_to_overwrite(onnx_model, tmp_path, capsys):
    src = tmp_path / "tiny.cnn"
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"keep me")
    assert main(["export", str(src), "-o", str(mine)]) == 2
    assert mine.read_bytes() == b"keep me" and "mine.onnx already exists" in capsys.readouterr().err
    assert main(["export", str(src), "-o", str(mine), "--force"]) == 0
    assert mine.read_bytes() != b"keep me"

    np.save(tmp_path / "x.npy", np.zeros((1, 2, 5, 5), np.float32))
    out = tmp_path / "out.npz"
    out.write_bytes(b"keep me too")
    args = ["run", str(src), "--input", str(tmp_path / "x.npy"), "--reference", "-o", str(out)]
    assert main(args) == 2
    assert out.read_bytes() == b"keep me too" and "out.npz already exists" in \
        capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert set(np.load(out)) == {"logits"}
    assert main(args[:-1] + [str(tmp_path / "out.data")]) == 2  # np.savez would add .npz


def test_compile_emit_refuses_to_overwrite(tmp_path, capsys):
    src = tmp_path / "r.cnn"
    src.write_text("network r\ninput x: 2 x 3 x 3\nx -> relu -> output y\n")
    emit = tmp_path / "gen"
    assert main(["compile", str(src), "--emit", str(emit)]) == 0
    files = sorted(emit.iterdir())
    assert files and str(files[0].name) in capsys.readouterr().out
    files[0].write_text("# my edits\n")
    assert main(["compile", str(src), "--emit", str(emit)]) == 2
    assert files[0].read_text() == "# my edits\n" and "--force" in capsys.readouterr().err
    assert main(["compile", str(src), "--emit", str(emit), "--force"]) == 0
    assert files[0].read_text() != "# my edits\n"


def test_compile_dump_ir_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    """--dump-ir writes one run's IR into a new or empty folder; an earlier dump (or anything
    else) there is refused without --force, with the same words as every writer. With --force
    the earlier dump's files are replaced, none left from a run with more passes, and the
    user's other files stay."""
    src = tmp_path / "r.cnn"
    src.write_text("network r\ninput x: 2 x 3 x 3\nx -> relu -> output y\n")
    dump = tmp_path / "ir"
    assert main(["compile", str(src), "--dump-ir", str(dump)]) == 0
    at_o2 = sorted(p.name for p in dump.iterdir())
    assert at_o2[0] == "00-input.ir" and len(at_o2) > 5
    capsys.readouterr()
    (dump / "00-input.ir").write_text("my notes\n")
    assert main(["compile", str(src), "-O0", "--dump-ir", str(dump)]) == 2
    err = capsys.readouterr().err
    assert f"{dump} is not empty; give --force" in err and "(nothing was written)" in err
    assert sorted(p.name for p in dump.iterdir()) == at_o2
    assert (dump / "00-input.ir").read_text() == "my notes\n"

    (dump / "notes.txt").write_text("mine\n")
    assert main(["compile", str(src), "-O0", "--dump-ir", str(dump), "--force"]) == 0
    at_o0 = ["00-input.ir"] + [f"{i:02d}-{name}.ir" for i, (name, _) in enumerate(pipeline(0), 1)]
    at_o0.append(f"{len(at_o0):02d}-memory_plan.ir")  # the lowered graph with the memory plan
    assert sorted(p.name for p in dump.iterdir()) == at_o0 + ["notes.txt"]
    assert "graph r" in (dump / "00-input.ir").read_text()
    assert (dump / "notes.txt").read_text() == "mine\n"

    with pytest.raises(ModelError, match="is not empty; give --force"):
        compile_model(src.read_text(), dump_ir=dump, warm=False)
    compile_model(src.read_text(), dump_ir=dump, force=True, warm=False)
    (tmp_path / "file").write_text("")
    assert main(["compile", str(src), "--dump-ir", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_write_files_is_all_or_nothing(tmp_path):
    keep = tmp_path / "a.txt"
    keep.write_text("old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_files({keep: "new", tmp_path / "b.txt": boom}, force=True)
    assert keep.read_text() == "old" and sorted(tmp_path.iterdir()) == [keep]
    with pytest.raises(CliError, match="would be written twice"):
        write_files({tmp_path / "c": "1", str(tmp_path / "sub" / ".." / "c"): "2"})
    with pytest.raises(CliError, match="no such folder"):
        write_files({tmp_path / "missing" / "c": "1"})
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CliError, match="not a regular file"):
        write_files({tmp_path / "fifo": "1", tmp_path / "dir": "2"}, force=True)
    written = write_files({tmp_path / "d" / "e.txt": "x"}, create_folders=True)
    assert written == [tmp_path / "d" / "e.txt"] and written[0].read_text() == "x"
    mask = os.umask(0o022)
    os.umask(mask)
    assert written[0].stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_library_modules_never_import_cli():
    """Command modules and library modules import cli_common; only `main` lives in cli.py."""
    code = ("import sys\n"
            "import cnnc.runtime.commands, cnnc.runtime.onnx_commands, cnnc.runtime.images\n"
            "import cnnc.runtime.weights, cnnc.runtime.memory, cnnc.runtime.cli_common\n"
            "print('cnnc.runtime.cli' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False"
