"""bench/examples_peer.py does what pytorch/examples' main.py does with torchvision's transforms."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def folder(root, sizes, classes=("b_cls", "a_cls")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.JPEG", quality=95)
        (root / c / "notes.txt").write_text("not an image")
    return root


def test_random_resized_crop_keeps_scale_and_ratio(bench):
    peer = bench("examples_peer")
    torch.manual_seed(0)
    width, height = 500, 375
    areas, ratios = [], []
    for _ in range(300):
        top, left, h, w = peer.random_resized_crop_box(width, height)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        areas.append(w * h / (width * height))
        ratios.append(w / h)
    # rounding w and h to pixels moves area and ratio by a little
    assert 0.08 * 0.97 <= min(areas) and max(areas) <= 1.0
    assert 3 / 4 * 0.97 <= min(ratios) and max(ratios) <= 4 / 3 * 1.03
    assert min(areas) < 0.2 and max(areas) > 0.8  # the whole range is used, not one size


def test_random_resized_crop_falls_back_to_the_centre(bench):
    peer = bench("examples_peer")
    # 1000x10: every try needs h >= sqrt(0.08 * 10000 * 3/4) = 24 > 10 rows, so all ten fail; the
    # fallback is the centre crop with the ratio clamped to 4/3: h = 10, w = round(13.3) = 13
    assert peer.random_resized_crop_box(1000, 10) == (0, (1000 - 13) // 2, 10, 13)
    assert peer.random_resized_crop_box(10, 1000) == ((1000 - 13) // 2, 0, 13, 10)


def test_image_folder_lists_classes_sorted_and_normalises(bench, tmp_path):
    peer = bench("examples_peer")
    root = folder(tmp_path / "train", [(50, 40), (30, 60)])
    train = peer.ImageFolderTrain(root, size=24)
    assert train.classes == ["a_cls", "b_cls"] and len(train) == 4  # the .txt is not an image
    assert [t for _, t in train.samples] == [0, 0, 1, 1]
    torch.manual_seed(0)
    x, target = train[3]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and target == 1
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert all(lo[c] - 1e-6 <= x[c].min() and x[c].max() <= hi[c] + 1e-6 for c in range(3))

    val = peer.ImageFolderVal(root, size=24, resize=32)
    x, target = val[0]
    # torchvision's Resize(32) of 50x40: shorter side 40 -> 32, longer int(32 * 50 / 40) = 40;
    # CenterCrop(24): left round((40 - 24) / 2) = 8, top round((32 - 24) / 2) = 4
    img = Image.open(root / "a_cls" / "0.JPEG").convert("RGB").resize((40, 32), Image.Resampling.BILINEAR)
    expected = (np.asarray(img, np.float64)[4:28, 8:32] / 255 - MEAN) / STD
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    x, _ = val[1]  # 30x60 portrait: 32x64, crop at left 4, top 20
    img = Image.open(root / "a_cls" / "1.JPEG").convert("RGB").resize((32, 64), Image.Resampling.BILINEAR)
    expected = (np.asarray(img, np.float64)[20:44, 4:28] / 255 - MEAN) / STD
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_accuracy_is_mains(bench):
    peer = bench("examples_peer")
    output = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 2, 0, 1])
    top1, top2 = peer.accuracy(output, target, topk=(1, 2))
    assert top1.item() == 25.0 and top2.item() == 75.0  # top-2 also holds rows 1 and 3, not row 2


@pytest.mark.slow
def test_training_loop_runs_across_epochs(bench, tmp_path):
    peer = bench("examples_peer")
    folder(tmp_path / "data" / "train", [(64, 48), (48, 64), (80, 60)])  # 6 images: 2 steps an epoch of 3
    result = peer.train_images_per_s(tmp_path / "data", steps=2, warmup=2, batch=3, bf16=False, workers=0,
                                     device=torch.device("cpu"))
    assert result["steps"] == 2 and result["batch"] == 3 and result["images/s"] > 0
    assert math.isfinite(result["last loss"]) and abs(result["last loss"] - math.log(1000)) < 1.0
