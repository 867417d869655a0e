"""Crafted torch.save files (alexnet/torch_file.py): refused in one line, before anything is inflated
or allocated, by `import torchvision` and by every command that reads a checkpoint."""

import io
import os
import struct
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet.torch_file as torch_file
from alexnet.model.checkpoint import load_checkpoint
from alexnet.cli.commands import main
from alexnet.errors import UserError


def rezip(src, out, compression=zipfile.ZIP_STORED, inflate_to: int = 0):
    """`src` (a torch.save file) written again with Python's zipfile: its entries compressed with
    `compression`, and with `inflate_to` bytes of zeros as its first storage (data/0), written a MiB at a
    time so that the test never holds them: the 4.2 MB .pth of the report inflated to 4.5 GB this way."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(out, "w", compression) as new:
        for info in z.infolist():
            if inflate_to and info.filename.endswith("/data/0"):
                with new.open(info.filename, "w", force_zip64=True) as f:
                    for _ in range(inflate_to >> 20):
                        f.write(bytes(1 << 20))
            else:
                new.writestr(info.filename, z.read(info.filename))
    return out


@pytest.fixture
def torch_load_is_not_reached(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("torch.load ran on a file the archive check should have refused")

    monkeypatch.setattr(torch, "load", load)


def one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"alexnet {command}: error: "), err
    assert "weights_only" not in err  # never torch's advice to load with code execution on
    return err


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path, torch_load_is_not_reached, capsys):
    torch.save({"features.0.weight": torch.zeros(4)}, tmp_path / "small.pth")
    bomb = rezip(tmp_path / "small.pth", tmp_path / "bomb.pth", zipfile.ZIP_DEFLATED, inflate_to=64 << 20)
    assert bomb.stat().st_size < 100_000  # 64 MiB declared in under 100 KB
    assert main(["import", "torchvision", str(bomb), "--out", str(tmp_path / "x.pt")]) == 2
    assert "is compressed" in one_line(capsys, "import") and not (tmp_path / "x.pt").exists()
    with pytest.raises(UserError, match="is compressed .* refused before anything is inflated"):
        load_checkpoint(bomb)


def test_entries_that_declare_more_than_the_file_holds_are_refused(tmp_path, tiny_run, monkeypatch):
    torch.save({"w": torch.arange(4.0)}, tmp_path / "w.pth")
    assert torch_file.archive_problem(rezip(tmp_path / "w.pth", tmp_path / "stored.pth")) is None
    data = bytearray((tmp_path / "stored.pth").read_bytes())
    entry = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)  # the second entry's directory record
    struct.pack_into("<I", data, entry + 24, 1 << 31)  # its uncompressed size: 2 GiB, stored
    (tmp_path / "lies.pth").write_bytes(bytes(data))
    with pytest.raises(UserError, match="declares 2.0 GiB but holds"):
        load_checkpoint(tmp_path / "lies.pth")
    # the limit on what an archive and its tensors may hold (4 GiB; here lowered to a real checkpoint's size)
    size = (tiny_run / "last.pt").stat().st_size
    load_checkpoint(tiny_run)
    monkeypatch.setattr(torch_file, "MAX_BYTES", size // 2)
    with pytest.raises(UserError, match="more than the .* a weights file may hold"):
        load_checkpoint(tiny_run)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on quantized and CSR tensors
def test_tensors_that_are_not_plain_dense_values_are_refused(tmp_path, capsys):
    q = torch.quantize_per_tensor(torch.randn(64, 3, 11, 11), 0.1, 0, torch.qint8)
    cases = {
        "sparse_coo tensor; only dense": torch.eye(3).to_sparse(),
        "sparse_csr tensor; only dense": torch.eye(3).to_sparse_csr(),
        "quantized tensor (torch.qint8)": q,
        "on the meta device": torch.empty(64, 3, 11, 11, device="meta"),  # no values: 228 MB of zeros written
        "repeats its values": torch.zeros(1).expand(64, 3, 11, 11),  # 4 bytes that claim 93 KB
    }
    for why, tensor in cases.items():
        torch.save({"features.0.weight": tensor}, tmp_path / "bad.pth")
        assert main(["import", "torchvision", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "x.pt")]) == 2
        err = one_line(capsys, "import")
        assert "'features.0.weight' " in err and why in err, err
    torch.save({0: torch.zeros(2)}, tmp_path / "int_keys.pth")
    assert main(["import", "torchvision", str(tmp_path / "int_keys.pth"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "its key 0 is not a layer name" in one_line(capsys, "import")
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11, dtype=torch.int64)}, tmp_path / "ints.pth")
    assert main(["import", "torchvision", str(tmp_path / "ints.pth"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "holds torch.int64 values" in one_line(capsys, "import")
    assert not (tmp_path / "x.pt").exists()


def test_unreadable_files_get_our_own_one_line(tmp_path, capsys):
    """torch's message for a pickle that names a class advises retrying with code execution allowed:
    never passed on."""
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "code.pth")
    (tmp_path / "one.pth").write_bytes(b"x")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"w": torch.zeros(2)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    for name, why in (("code", "would need code to load (torch.nn.modules.linear.Linear); refused, nothing was run"),
                      ("one", "a 1-byte file that is not a zip archive"), ("empty", "an empty file"),
                      ("old", "older formats are refused")):
        assert main(["import", "torchvision", str(tmp_path / f"{name}.pth"), "--out", str(tmp_path / "x.pt")]) == 2
        assert why in one_line(capsys, "import"), name
        with pytest.raises(UserError, match="is not an alexnet checkpoint: ") as e:
            load_checkpoint(tmp_path / f"{name}.pth")
        assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_a_pickle_nested_deeper_than_pythons_stack_is_one_line(tmp_path):
    """A list in a list ... 100,000 deep (pickle: 100,000 EMPTY_LISTs, then APPENDs): torch's unpickler
    builds it without recursion, and so must every check after it."""
    torch.save([], tmp_path / "flat.pt")
    with zipfile.ZipFile(tmp_path / "flat.pt") as z:
        files = {i.filename: z.read(i.filename) for i in z.infolist()}
    pkl = next(n for n in files if n.endswith("/data.pkl"))
    files[pkl] = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    with zipfile.ZipFile(tmp_path / "deep.pt", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(UserError, match="is not an alexnet checkpoint$"):
        load_checkpoint(tmp_path / "deep.pt")


def test_non_finite_weights_in_a_checkpoint_are_refused(tiny_run, tmp_path, capsys):
    payload = torch.load(tiny_run / "last.pt", weights_only=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    weights = payload["model"]
    weights["conv1.weight"] = weights["conv1.weight"].clone()
    weights["conv1.weight"][0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(UserError, match="weight conv1.weight holds 3 NaN or infinite values"):
        load_checkpoint(tmp_path / "nan.pt")
    assert main(["predict", str(tmp_path / "nan.pt"), str(tmp_path / "red.png"), "--device", "cpu"]) == 2
    assert "conv1.weight holds 3 NaN or infinite values" in one_line(capsys, "predict")
    # finite weights whose sums overflow float32: predict refuses rather than print 'nan%' beside labels
    payload = torch.load(tiny_run / "last.pt", weights_only=True)
    payload["model"]["fc7.bias"] = torch.ones_like(payload["model"]["fc7.bias"])  # fc7 > 0 after its ReLU
    payload["model"]["fc8.weight"] = torch.full_like(payload["model"]["fc8.weight"], 3e38)
    torch.save(payload, tmp_path / "overflow.pt")
    assert main(["predict", str(tmp_path / "overflow.pt"), str(tmp_path / "red.png"), "--device", "cpu"]) == 2
    err = one_line(capsys, "predict")
    assert "outputs for" in err and "red.png are not finite" in err
    assert np.isfinite(load_checkpoint(tmp_path / "overflow.pt")["model"]["fc8.weight"].numpy()).all()


def test_files_torch_save_writes_load_as_before(tmp_path):
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": [torch.ones(2, dtype=torch.float64), {"c": 3}]}
    torch.save(state, tmp_path / "ok.pt")
    got = torch_file.read_torch_file(tmp_path / "ok.pt", "a test file")
    assert torch.equal(got["a"], state["a"]) and torch.equal(got["b"][0], state["b"][0]) and got["b"][1] == {"c": 3}
    buf = io.BytesIO()
    torch.save(state, buf)
    assert zipfile.ZipFile(buf).infolist()[0].compress_type == zipfile.ZIP_STORED  # what the check relies on


def test_a_file_whose_name_is_not_utf8_loads(tmp_path):
    """torch's reader takes the name as UTF-8 text; such a file is opened first and read by its fd."""
    name = os.fsdecode(os.fsencode(tmp_path) + b"/run-\xff.pt")
    torch.save({"model": {"w": torch.arange(3.0)}}, tmp_path / "plain.pt")
    os.rename(tmp_path / "plain.pt", name)
    assert torch.equal(torch_file.read_torch_file(name, "a checkpoint")["model"]["w"], torch.arange(3.0))
