"""`alexnet predict`: files, folders and globs, a batch at a time, one line per unreadable file."""

import json

import numpy as np
import pytest
from PIL import Image

import alexnet.evaluate.predict as predict
from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.evaluate.predict import image_paths, iter_predictions, predict_files


@pytest.fixture
def photos(demo_store, tmp_path):
    """a.png, b.jpg, sub/c.JPEG, sub/deeper/d.png (val images), a text file and a broken .jpg."""
    store = ImageStore(demo_store, "val")
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    for name, i in (("a.png", 0), ("b.jpg", 11), ("sub/c.JPEG", 25), ("sub/deeper/d.png", 90)):
        Image.fromarray(store[i][0]).save(root / name, quality=95)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def test_folders_and_globs_expand_to_their_image_files(photos):
    got = list(image_paths([photos]))
    assert [p.replace(str(photos) + "/", "") for p, _ in got] == ["a.png", "b.jpg", "sub/broken.jpg", "sub/c.JPEG",
                                                                  "sub/deeper/d.png"]
    assert all(why is None for _, why in got)
    assert [p for p, _ in image_paths([str(photos / "*.png"), str(photos / "**" / "*.png")])] == [
        str(photos / "a.png"), str(photos / "a.png"), str(photos / "sub/deeper/d.png")]
    assert list(image_paths([str(photos / "*.gif")])) == [(str(photos / "*.gif"), "no file matches this pattern")]
    (photos / "empty").mkdir()
    assert list(image_paths([photos / "empty"])) == [(str(photos / "empty"), "the folder holds no image files")]
    # a named file is tried whatever its name, and a missing one is left for the reader to report
    assert list(image_paths([photos / "notes.txt", "missing.jpg"])) == [(str(photos / "notes.txt"), None),
                                                                       ("missing.jpg", None)]


def test_predictions_stream_one_batch_at_a_time(tiny_run, photos, monkeypatch):
    decoded = []
    real = predict.store_pixels

    def counting(path, size):
        decoded.append(path)
        return real(path, size)

    monkeypatch.setattr(predict, "store_pixels", counting)
    results = iter_predictions(tiny_run, [photos], device="cpu", batch_size=2)
    assert decoded == []  # nothing read before the first result is asked for
    first = next(results)
    assert first["file"].endswith("a.png") and len(decoded) == 2  # one batch decoded, not five files
    rest = list(results)
    assert [r["file"].rsplit("/", 1)[1] for r in rest] == ["b.jpg", "broken.jpg", "c.JPEG", "d.png"]
    assert "error" in rest[1] and "top" not in rest[1]
    # batching changes nothing: the same probabilities one file at a time
    single = predict_files(tiny_run, [photos], device="cpu", batch_size=1)
    for a, b in zip([first, *rest], single):
        assert a["file"] == b["file"] and ("top" in a) == ("top" in b)
        if "top" in a:
            np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                       rtol=1e-5, atol=1e-7)


def test_predict_command_reports_each_unreadable_input_and_exits_2(tiny_run, photos, capsys):
    assert main(["predict", str(tiny_run), str(photos), str(photos / "*.webp"), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("%") == 4 * 5 and "d.png" in captured.out
    errors = captured.err.splitlines()
    assert len(errors) == 2 and "broken.jpg" in errors[0] and "*.webp: no file matches this pattern" in errors[1]
    assert main(["predict", str(tiny_run), str(photos / "sub" / "*.JPEG"), "--json", "--top", "3",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["file"].endswith("c.JPEG") and len(out[0]["top"]) == 3
    for argv in (["--top", "0"], ["--top", "-1"]):
        assert main(["predict", str(tiny_run), str(photos / "a.png"), *argv]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_precision_flag_reaches_the_arithmetic_of_predict_eval_and_features(tiny_run, demo_store, photos, tmp_path,
                                                                           capsys, monkeypatch):
    """--precision float32 is the CPU's default arithmetic, bit for bit; bf16 autocast rounds differently
    (the same top label here, probabilities within bf16's precision)."""
    monkeypatch.delenv("ALEXNET_INFERENCE_PRECISION", raising=False)
    outputs = {}
    for precision in ("auto", "float32", "bf16"):
        assert main(["predict", str(tiny_run), str(photos / "a.png"), "--json", "--device", "cpu",
                     "--precision", precision]) == 0
        outputs[precision] = json.loads(capsys.readouterr().out)[0]["top"]
    assert outputs["auto"] == outputs["float32"] and outputs["bf16"] != outputs["float32"]
    assert np.allclose([t["probability"] for t in outputs["bf16"]],
                       [t["probability"] for t in outputs["float32"]], atol=0.03)
    for precision in ("float32", "bf16"):
        out = tmp_path / f"{precision}.npy"
        assert main(["features", str(tiny_run), "--data", str(demo_store), "--split", "val", "--out", str(out),
                     "--device", "cpu", "--quiet", "--precision", precision]) == 0
        assert main(["eval", str(tiny_run), "--data", str(demo_store), "--device", "cpu", "--quiet",
                     "--precision", precision, "--json", str(tmp_path / f"{precision}.json")]) == 0
    f32, b16 = np.load(tmp_path / "float32.npy"), np.load(tmp_path / "bf16.npy")
    assert not np.array_equal(f32, b16) and np.allclose(f32, b16, atol=0.05 * np.abs(f32).max())
    with pytest.raises(SystemExit) as usage:
        main(["eval", str(tiny_run), "--precision", "half"])
    assert usage.value.code == 2
