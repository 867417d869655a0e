"""§6 fine-tuning keeps the preprocessing the source net's weights expect (its mean image) unless
asked, says which in one line, and a resumed fine-tuned run goes on subtracting the same mean."""

import numpy as np
import pytest
import torch

from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.data.demo_images import make_demo_data
from alexnet.data.prepare import prepare
from alexnet.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def store3(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    make_demo_data(root / "src", classes=3, train_per_class=16, val_per_class=4, seed=5)
    prepare(root / "src", root / "store", size=72, workers=1, progress=False, log=lambda *a: None)
    return root / "store"


def _finetune(tiny_run, store, out, *extra):
    return main(["train", "--data", str(store), "--finetune", str(tiny_run), "--out", str(out), "--epochs", "1",
                 "--max-steps", "2", "--batch-size", "16", "--schedule", "step", "--workers", "1", "--device", "cpu",
                 "--quiet", *extra])


def test_finetuning_keeps_the_sources_mean_image_unless_asked(tiny_run, store3, tmp_path, capsys):
    source_mean = load_checkpoint(tiny_run)["mean"]
    store_mean = torch.from_numpy(ImageStore(store3, "train").mean)
    assert not torch.equal(source_mean, store_mean)  # the demo store and this one differ

    assert _finetune(tiny_run, store3, tmp_path / "kept") == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preprocessing:")]
    assert len(said) == 1 and "source's mean image" in said[0]
    assert torch.equal(load_checkpoint(tmp_path / "kept" / "last.pt")["mean"], source_mean)

    assert _finetune(tiny_run, store3, tmp_path / "store", "--data.finetune-mean", "store") == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preprocessing:")]
    assert len(said) == 1 and "this store's mean image" in said[0]
    assert torch.equal(load_checkpoint(tmp_path / "store" / "last.pt")["mean"], store_mean)

    # a resumed fine-tuned run subtracts the mean it started with, not its store's
    assert main(["train", "--resume", str(tmp_path / "kept"), "--max-steps", "3", "--quiet"]) == 0
    resumed = load_checkpoint(tmp_path / "kept" / "last.pt")
    assert resumed["global_step"] == 3 and torch.equal(resumed["mean"], source_mean)


def test_a_source_mean_of_another_size_is_resized_to_the_store(tiny_run, tmp_path, capsys):
    """A constant mean (as the imported nets' per-channel one) stays exactly that colour at any size."""
    make_demo_data(tmp_path / "src", classes=2, train_per_class=16, val_per_class=2, seed=6)
    prepare(tmp_path / "src", tmp_path / "s80", size=80, workers=1, progress=False, log=lambda *a: None)
    payload = load_checkpoint(tiny_run)
    payload["mean"] = torch.tensor([120.0, 110.0, 100.0]).expand(72, 72, 3).contiguous()
    from alexnet.model.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "source.pt", {k: v for k, v in payload.items() if k != "path"})
    assert _finetune(tmp_path / "source.pt", tmp_path / "s80", tmp_path / "run") == 0
    assert "(resized to the store)" in capsys.readouterr().out
    mean = load_checkpoint(tmp_path / "run" / "last.pt")["mean"]
    assert mean.shape == (80, 80, 3)
    np.testing.assert_array_equal(mean.numpy(), np.broadcast_to([120.0, 110.0, 100.0], (80, 80, 3)))
