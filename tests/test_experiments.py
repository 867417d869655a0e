"""The paper's experiments: ablation configs, the results table, Fig. 1 on CIFAR-format files."""

import json
import pickle

import numpy as np
import pytest
import torch

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.data.cifar import load_cifar10, write_cifar_batches
from alexnet.fig1 import FourLayerNet, prepare_inputs, relu_vs_tanh, train_curve
from alexnet.cli import main
from alexnet.data import ImageStore
from alexnet.data.demo import make_demo_cifar
from alexnet.errors import UserError
from alexnet.evaluate import predict_probabilities
from alexnet.experiments import EXPERIMENTS, experiment_config, run_experiment
from alexnet.model import AlexNet, count_parameters


@pytest.mark.slow
def test_each_ablation_changes_what_it_names():
    base = experiment_config("baseline")
    assert base.model == AlexNet().config
    assert experiment_config("no-lrn").model.lrn is False
    c = experiment_config("no-overlap").model
    assert (c.pool_size, c.pool_stride) == (2, 2)
    c = experiment_config("one-tower").model
    assert c.towers == 1 and c.channels == (48, 128, 192, 192, 256)
    assert experiment_config("no-lighting").data.lighting_std == 0.0
    assert experiment_config("no-dropout").model.dropout == 0.0
    assert experiment_config("minus-conv3").model.remove_conv == 3
    assert experiment_config("six-conv").model.extra_conv
    small = experiment_config("one-tower", "small").model
    assert small.towers == 1 and small.input_size == 64
    for name in EXPERIMENTS:  # every ablation builds, on the paper's base and the small one
        for base_name in ("paper", "small"):
            AlexNet(experiment_config(name, base_name).model)
    assert count_parameters(AlexNet(experiment_config("one-tower").model)) == 59_798_312
    with pytest.raises(UserError, match="unknown experiment"):
        experiment_config("no-relu")


@pytest.mark.slow
def test_experiment_rows_make_one_comparable_table(demo_store, tmp_path, capsys):
    layers = ({"train": {"epochs": 1, "batch_size": 64}},)
    row = run_experiment("baseline", demo_store, "tiny", tmp_path / "res", layers, "cpu", progress=False,
                         log=lambda *a: None)
    assert row["experiment"] == "baseline" and row["epochs"] == 1
    # the row holds the error rates of the run's best.pt (top-1 recomputed here from its probabilities)
    best = tmp_path / "res" / "runs" / row["run"] / "best.pt"
    store = ImageStore(demo_store, "val")
    for views, key in ((1, "top1_err"), (10, "top1_err_10crop")):
        probs = predict_probabilities(model_from_checkpoint(load_checkpoint(best)), store, torch.device("cpu"), views)
        assert row[key] == pytest.approx(1 - (probs.argmax(1) == store.labels).mean())
    assert main(["experiment", "no-lrn", "--data", str(demo_store), "--base", "tiny", "--epochs", "1",
                 "--batch-size", "64", "--results", str(tmp_path / "res"), "--quiet", "--device", "cpu"]) == 0
    table = (tmp_path / "res" / "results.md").read_text().splitlines()
    assert len(table) == 4 and "| baseline |" in table[2] and "| no-lrn |" in table[3]
    assert " pts |" in table[3]  # the difference to the baseline of the same data, base and settings
    rows = [json.loads(line) for line in (tmp_path / "res" / "results.jsonl").read_text().splitlines()]
    assert [r["experiment"] for r in rows] == ["baseline", "no-lrn"]
    assert rows[1]["change"] == "no response normalisation" and rows[1]["section"] == "§3.3"
    assert rows[0]["settings"] == rows[1]["settings"]  # one recipe, two ablations
    assert main(["experiment", "no-lrn", "--results", str(tmp_path / "res")]) == 2
    assert "--data" in capsys.readouterr().err


@pytest.mark.slow
def test_experiment_runs_are_named_by_their_settings(demo_store, tmp_path):
    """Other settings train a new run (not a "resume" of a finished one); a run stopped early writes
    no row; the same settings resume their own run."""
    res = tmp_path / "res"

    def run(epochs, **train):
        layers = ({"train": {"epochs": epochs, "batch_size": 64, **train}},)
        return run_experiment("baseline", demo_store, "tiny", res, layers, "cpu", progress=False, log=lambda *a: None)

    one, two = run(1), run(2)
    folders = sorted(p.name for p in (res / "runs").iterdir())
    assert len(folders) == 2 and folders == sorted([one["run"], two["run"]])
    assert (one["epochs"], two["epochs"]) == (1, 2) and one["settings"] != two["settings"]
    assert len(load_checkpoint(res / "runs" / two["run"] / "last.pt")["history"]) == 2
    table = (res / "results.md").read_text().splitlines()
    assert len(table) == 4 and " pts |" not in "".join(table)  # no difference across two recipes

    with pytest.raises(UserError, match="no row was written"):
        run(3, max_steps=20)  # 15 steps an epoch: stops inside epoch 2
    assert len((res / "results.jsonl").read_text().splitlines()) == 2
    stopped = next(p for p in (res / "runs").iterdir() if p.name not in folders)
    assert load_checkpoint(stopped / "last.pt")["global_step"] == 20
    again = run(1)  # the first run again: found finished, evaluated, not retrained
    assert again["run"] == one["run"] and again["top1_err"] == one["top1_err"]
    assert len(list((res / "runs").iterdir())) == 3


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    return make_demo_cifar(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py", train_per_class=24,
                           test_per_class=4, seed=3)


def test_cifar_batches_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 23)
    write_cifar_batches(tmp_path / "c", images, labels, [f"c{i}" for i in range(10)], images[:4], labels[:4])
    data = load_cifar10(tmp_path / "c")
    np.testing.assert_array_equal(data["train"][0], images)
    np.testing.assert_array_equal(data["train"][1], labels)
    assert data["classes"][3] == "c3" and data["test"][0].shape == (4, 32, 32, 3)
    with open(tmp_path / "c" / "data_batch_1", "rb") as f:  # the standard layout: rows of R, G, B planes
        raw = pickle.load(f, encoding="bytes")
    assert raw[b"data"].shape[1] == 3072 and raw[b"data"][0, 0] == images[0, 0, 0, 0]
    assert raw[b"data"][0, 1024] == images[0, 0, 0, 1]


def test_cifar_reader_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_cifar10(tmp_path / "none")
    (tmp_path / "c").mkdir()
    with pytest.raises(UserError, match="data_batch_1"):
        load_cifar10(tmp_path / "c")
    for i in range(1, 6):
        (tmp_path / "c" / f"data_batch_{i}").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a CIFAR-10 batch"):
        load_cifar10(tmp_path / "c")


def test_four_layer_net_trains(small_cifar):
    data = load_cifar10(small_cifar)
    x, y = prepare_inputs(data["train"][0]), torch.from_numpy(data["train"][1])
    assert FourLayerNet("tanh")(x[:2]).shape == (2, 10)
    assert len(list(FourLayerNet().parameters())) == 8  # four layers with weights
    run = train_curve(x, y, "relu", 0.01, epochs=10, target=0.7, batch_size=16)
    assert run["errors"][-1] < run["errors"][0] and run["iterations_to_target"] is not None
    assert run["iterations_to_target"] == len(run["errors"]) * run["iterations_per_epoch"]
    assert train_curve(x, y, "relu", 1e8, epochs=2, batch_size=16)["diverged"]


def test_relu_vs_tanh_writes_the_figure(small_cifar, tmp_path):
    r = relu_vs_tanh(small_cifar, tmp_path / "fig1", lrs=(0.003, 0.01), trial_epochs=1, max_epochs=4,
                     target=0.85, device="cpu", log=lambda *a: None)
    assert set(r["runs"]) == {"relu", "tanh"}
    for run in r["runs"].values():
        assert run["lr"] in (0.003, 0.01) and len(run["trials"]) == 2
    assert (tmp_path / "fig1" / "fig1.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "fig1" / "fig1.json").read_text())
    assert saved["target"] == 0.85
    if saved["ratio"] is not None:
        its = saved["runs"]
        assert saved["ratio"] == pytest.approx(its["tanh"]["iterations_to_target"] / its["relu"]["iterations_to_target"])
