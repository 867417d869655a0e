"""The shared evaluation loop against independent computations, and the fit check of every command
that runs a checkpoint on a store."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from alexnet.model.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint, save_checkpoint
from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.data.augment import BatchTransforms
from alexnet.data.demo_images import make_demo_data
from alexnet.data.prepare import prepare
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import check_fits, evaluate, store_outputs, validate, view_outputs

CPU = torch.device("cpu")


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def test_ten_views_average_the_softmax_of_each_patch(tiny_run, demo_store):
    """§4.1: the prediction is the mean of the ten patches' softmax outputs (NumPy float64)."""
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    store = ImageStore(demo_store, "val")
    t = BatchTransforms.for_store(store, model.config.input_size)
    images = torch.from_numpy(store.get_batch([0, 5, 61]))
    with torch.no_grad():
        patch_logits = model(t.test(images, 10).contiguous()).numpy().reshape(3, 10, -1)
        patch_features = model.embed(t.test(images, 10).contiguous()).numpy().reshape(3, 10, -1)
    expected = _softmax64(patch_logits.reshape(30, -1)).reshape(3, 10, -1).mean(1)
    with torch.no_grad():
        probs = view_outputs(model, images, t, 10, "probabilities").numpy()
        logits = view_outputs(model, images, t, 10, "logits").numpy()
        features = view_outputs(model, images, t, 10, "features").numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logits, patch_logits.mean(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features, patch_features.mean(1), rtol=1e-5, atol=1e-5)
    # the store-level loop gives the same rows for the same images, whatever the batching
    rows = store_outputs(model, store, CPU, views=10, indices=np.array([0, 5, 61]), batch_size=20)
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("views", [1, 10])
def test_validate_matches_an_independent_computation(tiny_run, demo_store, views):
    """Loss and error rates against NumPy float64 over the averaged probabilities, and a split over two
    processes (each its share, then summed) against one process."""
    payload = load_checkpoint(tiny_run)
    model = model_from_checkpoint(payload)
    store = ImageStore(demo_store, "val")
    t = BatchTransforms.for_store(store, model.config.input_size, checkpoint_config(payload).data)
    model.train()
    whole = validate(model, store, t, CPU, views, batch_size=30)
    assert model.training  # the caller's mode is restored
    probs = store_outputs(model, store, CPU, views=views).astype(np.float64)
    labels = store.labels
    order = np.argsort(-probs, axis=1, kind="stable")
    assert whole["n"] == 100
    assert whole["top1_err"] == pytest.approx(1 - (order[:, 0] == labels).mean(), abs=1e-12)
    assert whole["top5_err"] == pytest.approx(1 - (order[:, :5] == labels[:, None]).any(1).mean(), abs=1e-12)
    assert whole["loss"] == pytest.approx(-np.log(probs[np.arange(100), labels]).mean(), rel=1e-5)

    shares = []
    for rank in (0, 1):
        got = []
        validate(model, store, t, CPU, views, batch_size=30, rank=rank, world=2, reduce=got.append)
        shares.append(got[0])
    total = shares[0] + shares[1]
    loss, c1, c5, n = total.tolist()
    assert n == 100 and shares[0][3].item() == 50
    assert loss / n == pytest.approx(whole["loss"], rel=1e-6)  # float32 sums of other batches
    assert 1 - c1 / n == pytest.approx(whole["top1_err"], abs=1e-12)


def _validation_before_the_shared_loop(net, store, transforms, batch_size, views):
    """train.evaluate_split as it was before training called `validate`, on one process."""
    from alexnet.data.loader import BatchLoader, eval_plan
    from alexnet.evaluate.error_rates import topk_correct

    net.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for images, labels, _ in BatchLoader(store, eval_plan(len(store), max(1, batch_size // views)), CPU, workers=2):
            probs = net(transforms.test(images, views).contiguous()).float().softmax(1)
            if views > 1:
                probs = probs.reshape(len(labels), views, -1).mean(1)
            sums[0] -= probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum()
            c1, c5 = topk_correct(probs, labels, (1, 5))
            sums[1] += c1
            sums[2] += c5
            sums[3] += len(labels)
    loss, c1, c5, n = sums.tolist()
    return {"loss": loss / n, "top1_err": 1 - c1 / n, "top5_err": 1 - c5 / n, "n": int(n)}


def test_validate_gives_what_training_validation_gave(tiny_run, demo_store):
    """The shared loop computes bit for bit what training's own validation loop did."""
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    store = ImageStore(demo_store, "val")
    t = BatchTransforms.for_store(store, model.config.input_size)
    for views in (1, 10):
        before = _validation_before_the_shared_loop(model, store, t, 32, views)
        assert validate(model, store, t, CPU, views, 32) == before


# ---------------------------------------------------------------------------------------------------
# Stores that do not fit a checkpoint
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def misfits(tmp_path_factory):
    """The demo's ten classes prepared at 64 px (the tiny net's input, but not the checkpoint's 72),
    and at 72 px with an out-of-range label, and with a NaN mean image."""
    root = tmp_path_factory.mktemp("misfits")
    make_demo_data(root / "src", classes=10, train_per_class=2, val_per_class=1, seed=5)
    stores = {}
    for name, size in (("px64", 64), ("labels", 72)):
        prepare(root / "src", root / name, size=size, workers=1, progress=False, log=lambda *a: None)
        stores[name] = root / name
    shutil.copytree(root / "labels", root / "nan")
    stores["nan"] = root / "nan"
    labels = np.load(root / "labels" / "val" / "labels.npy")
    labels[3] = 10  # one past the last class
    np.save(root / "labels" / "val" / "labels.npy", labels)
    with np.load(root / "nan" / "stats.npz") as z:
        stats = {k: z[k] for k in z.files}
    stats["mean"][0, 0, 0] = np.nan
    np.savez(root / "nan" / "stats.npz", **stats)
    return stores


def _one_line_error(capsys, command: str, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"alexnet {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    return err


def test_every_command_refuses_a_store_of_another_image_size(tiny_run, demo_store, misfits, tmp_path, capsys):
    store = ImageStore(misfits["px64"], "val")
    assert store.classes == ImageStore(demo_store, "val").classes  # only the image size differs
    with pytest.raises(UserError, match="72x72 images.*64x64"):
        check_fits(load_checkpoint(tiny_run), store)
    ckpt, data = str(tiny_run), str(misfits["px64"])
    for argv in (["eval", ckpt, "--data", data],
                 ["eval", ckpt, ckpt, "--data", data, "--crops", "10"],  # an ensemble
                 ["features", ckpt, "--data", data, "--out", str(tmp_path / "f.npy")],
                 ["figures", ckpt, "--data", data, "--out", str(tmp_path / "figs")]):
        assert main([*argv, "--device", "cpu", "--quiet"]) == 2
        _one_line_error(capsys, argv[0], "--size 72")
    assert not list(tmp_path.iterdir())  # nothing written


def test_eval_refuses_out_of_range_labels_and_a_nan_mean(tiny_run, misfits, capsys):
    assert main(["eval", str(tiny_run), "--data", str(misfits["labels"]), "--device", "cpu", "--quiet"]) == 2
    _one_line_error(capsys, "eval", "labels outside 0..9")
    assert main(["eval", str(tiny_run), "--data", str(misfits["nan"]), "--device", "cpu", "--quiet"]) == 2
    _one_line_error(capsys, "eval", "non-finite values in mean")


def test_a_checkpoint_with_a_nan_mean_is_refused_by_predict_and_export(tiny_run, demo_store, tmp_path, capsys):
    payload = load_checkpoint(tiny_run)
    payload["mean"] = payload["mean"].clone()
    payload["mean"][1, 2, 0] = float("inf")
    with pytest.raises(UserError, match="mean image it carries is not finite"):
        check_fits(payload)
    with pytest.raises(UserError, match="mean image it carries is not finite"):
        check_fits(payload, ImageStore(demo_store, "val"))
    from PIL import Image

    Image.fromarray(ImageStore(demo_store, "val")[0][0]).save(tmp_path / "a.png")
    torch.save({k: v for k, v in payload.items() if k != "path"}, tmp_path / "bad.pt")
    assert main(["predict", str(tmp_path / "bad.pt"), str(tmp_path / "a.png"), "--device", "cpu"]) == 2
    _one_line_error(capsys, "predict", "not finite")
    assert main(["eval", str(tmp_path / "bad.pt"), "--data", str(demo_store), "--device", "cpu", "--quiet"]) == 2
    _one_line_error(capsys, "eval", "not finite")


def test_eval_json_holds_what_it_printed(tiny_run, demo_store, tmp_path, capsys):
    assert main(["eval", str(tiny_run), "--json", str(tmp_path / "e.json"), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    assert f"top-1 error {result['top1_err']:.2%}" in out and result["n"] == 100
    probs = store_outputs(model_from_checkpoint(load_checkpoint(tiny_run)), ImageStore(demo_store, "val"), CPU)
    assert result["top1_err"] == pytest.approx(1 - (probs.argmax(1) == ImageStore(demo_store, "val").labels).mean())


def test_a_checkpoint_is_evaluated_with_the_mean_image_it_was_trained_with(tiny_run, demo_store):
    """§2's mean is the training set's: a net imported or trained elsewhere subtracts its own mean, not
    the store's (the two are equal for a run trained on this store)."""
    payload = load_checkpoint(tiny_run)
    store = ImageStore(demo_store, "val")
    assert np.array_equal(model_from_checkpoint(payload).input_mean, store.mean)
    payload["mean"] = payload["mean"] + 20.0  # as if trained on a brighter store
    model = model_from_checkpoint(payload)
    rows = np.array([0, 7, 40])
    got = store_outputs(model, store, CPU, output="logits", indices=rows)
    images = store.get_batch(rows)[:, 4:68, 4:68].astype(np.float64)  # centre 64 of 72
    x = images - (store.mean.astype(np.float64) + 20.0)[4:68, 4:68]
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2).float()).numpy()
        with_store_mean = model(torch.from_numpy(x + 20.0).permute(0, 3, 1, 2).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(got - with_store_mean).max() > 1e-3  # the two means give different outputs


def _patch_probabilities_by_hand(model, store, rows: np.ndarray, mirrored: bool) -> np.ndarray:
    """§4.1 in NumPy float64: the four corner and the centre 64x64 patches of each 72x72 image (and,
    with `mirrored`, their horizontal reflections), minus the mean image at the same place; the
    mean of the patches' softmax outputs."""
    images, mean = store.get_batch(rows).astype(np.float64), store.mean.astype(np.float64)
    patches = []
    for top, left in [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]:
        patches.append(images[:, top : top + 64, left : left + 64] - mean[top : top + 64, left : left + 64])
    if mirrored:
        patches += [p[:, :, ::-1] for p in patches]
    x = np.stack(patches, 1).reshape(-1, 64, 64, 3)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.copy()).permute(0, 3, 1, 2).float().contiguous()).numpy()
    return _softmax64(logits).reshape(len(rows), len(patches), -1).mean(1)


def test_ten_patches_follow_the_training_s_reflections(tiny_run, demo_store, tmp_path, capsys):
    """A run trained with §4.1's reflections is tested on the ten patches; one trained without them
    (`data.flip = false`) on the five unmirrored patches only, views it has seen: `eval` says so."""
    payload = load_checkpoint(tiny_run)
    model = model_from_checkpoint(payload)
    store = ImageStore(demo_store, "val")
    assert checkpoint_config(payload).data.flip
    rows = np.array([0, 5, 61, 99])
    ten = _patch_probabilities_by_hand(model, store, rows, mirrored=True)
    five = _patch_probabilities_by_hand(model, store, rows, mirrored=False)
    assert np.abs(ten - five).max() > 1e-4  # the mirrored views change the average
    flip_on = checkpoint_config(payload).data
    np.testing.assert_allclose(store_outputs(model, store, CPU, views=10, indices=rows, data_config=flip_on),
                               ten, rtol=1e-4, atol=1e-6)
    flip_off = dataclasses.replace(flip_on, flip=False)
    np.testing.assert_allclose(store_outputs(model, store, CPU, views=10, indices=rows, data_config=flip_off),
                               five, rtol=1e-4, atol=1e-6)
    # the channels_last path (CUDA's) picks the same five
    t = BatchTransforms.for_store(store, model.config.input_size, flip_off)
    images = torch.from_numpy(store.get_batch(rows))
    with torch.no_grad():
        np.testing.assert_allclose(view_outputs(model, images, t, 10, channels_last=True).numpy(), five,
                                   rtol=1e-4, atol=1e-6)
    # the centre patch is the centre patch either way
    np.testing.assert_allclose(store_outputs(model, store, CPU, views=1, indices=rows, data_config=flip_off),
                               store_outputs(model, store, CPU, views=1, indices=rows), rtol=1e-6, atol=1e-7)

    # `eval` reads the choice from the checkpoint's config
    payload["config"]["data"]["flip"] = False
    del payload["path"]
    save_checkpoint(tmp_path / "no-flip.pt", payload)
    every = np.arange(len(store))
    by_hand = _patch_probabilities_by_hand(model, store, every, mirrored=False)
    result = evaluate([tmp_path / "no-flip.pt"], demo_store, "val", 10, device="cpu", progress=False)
    assert result["patches"] == 5 and result["models"][0]["patches"] == 5 and result["crops"] == 10
    assert result["top1_err"] == pytest.approx(1 - (by_hand.argmax(1) == store.labels).mean(), abs=1e-12)
    assert evaluate([tiny_run], demo_store, "val", 10, device="cpu", progress=False)["patches"] == 10
    assert main(["eval", str(tmp_path / "no-flip.pt"), "--data", str(demo_store), "--crops", "10",
                 "--device", "cpu", "--quiet"]) == 0
    assert "average of 5 patches (no reflections: the run trained without them)" in capsys.readouterr().out
