"""The paper's experiments: ablation configs, the results table, Fig. 1 on CIFAR-format files."""

import json
import pickle

import numpy as np
import pytest
import torch

from alexnet.model.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.data.cifar import load_cifar10, write_cifar_batches
from alexnet.experiments.table import t_tail_two_sided, welch_t_test, write_table
from alexnet.experiments.fig1 import FourLayerNet, crossing, prepare_inputs, relu_vs_tanh, train_curve, window_curve
from alexnet.experiments.fig1_plot import ratio_text
from alexnet.cli.commands import main
from alexnet.data import ImageStore
from alexnet.data.demo_images import make_demo_cifar
from alexnet.errors import UserError
from alexnet.evaluate.error_rates import predict_probabilities
from alexnet.experiments.ablations import EXPERIMENTS, experiment_config, run_arm, run_experiment
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
    assert main(["experiment", "no-lrn", "--data", str(demo_store), "--base", "tiny", "--epochs", "1", "--seeds", "2",
                 "--batch-size", "64", "--results", str(tmp_path / "res"), "--quiet", "--device", "cpu"]) == 0
    table = (tmp_path / "res" / "results.md").read_text().splitlines()
    assert len(table) == 4 and "| baseline |" in table[2] and "| no-lrn |" in table[3]
    assert " pts |" in table[3]  # the difference to the baseline of the same data, base and settings
    assert "| 0,1 |" in table[3] and "n/a (1 seed)" in table[3]  # two seeds of no-lrn, one of the baseline
    rows = [json.loads(line) for line in (tmp_path / "res" / "results.jsonl").read_text().splitlines()]
    assert [(r["experiment"], r["seed"]) for r in rows] == [("baseline", 0), ("no-lrn", 0), ("no-lrn", 1)]
    assert rows[1]["change"] == "no response normalisation" and rows[1]["section"] == "§3.3"
    assert rows[0]["settings"] == rows[1]["settings"] == rows[2]["settings"]  # one recipe, two ablations, any seed
    assert rows[1]["run"] != rows[2]["run"]  # each seed its own run folder
    mean = (rows[1]["top1_err"] + rows[2]["top1_err"]) / 2
    assert f"{(mean - rows[0]['top1_err']) * 100:+.2f} pts" in table[3]
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
    again = run(1)  # the first run again: found finished and recorded, so skipped (no new row)
    assert again["run"] == one["run"] and again["top1_err"] == one["top1_err"]
    assert len(list((res / "runs").iterdir())) == 3
    assert len((res / "results.jsonl").read_text().splitlines()) == 2
    seeds = run_arm("baseline", demo_store, "tiny", res, ({"train": {"epochs": 1, "batch_size": 64}},), "cpu",
                    progress=False, log=lambda *a: None, seeds=2)  # seed 0 is `one`, skipped; seed 1 trained
    assert [r["seed"] for r in seeds] == [0, 1] and seeds[0] == one and seeds[1]["run"] != one["run"]
    assert len((res / "results.jsonl").read_text().splitlines()) == 3
    with pytest.raises(UserError, match="--seeds must be at least 1"):
        run_arm("baseline", demo_store, "tiny", res, seeds=0)


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


def test_crossing_is_interpolated_between_points():
    # by hand: 0.30 at step 4, 0.20 at step 6; 0.25 is halfway between, at step 5
    assert crossing([0, 2, 4, 6], [0.9, 0.5, 0.3, 0.2], 0.25) == pytest.approx(5.0)
    # 0.5 at 1.5, 0.1 at 2.5: 0.4 is a quarter of the way down, at 1.75
    assert crossing([0.5, 1.5, 2.5], [0.8, 0.5, 0.1], 0.4) == pytest.approx(1.75)
    assert crossing([0, 1, 2], [0.6, 0.25, 0.1], 0.25) == 1.0  # reached exactly at a point
    assert crossing([3, 4], [0.2, 0.1], 0.25) == 3.0  # below from the start
    assert crossing([0, 1, 2], [0.9, 0.5, 0.4], 0.25) is None
    # the first crossing, not a later one after the curve went back up
    assert crossing([0, 1, 2, 3, 4], [0.5, 0.2, 0.4, 0.3, 0.1], 0.25) == pytest.approx(5 / 6)


def test_window_curve_is_the_running_mean_at_the_windows_centre():
    x, y = window_curve([1.0, 0.5, 0.5, 0.0, 0.0], 2)
    np.testing.assert_allclose(y, [0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(x, [0.5, 1.5, 2.5, 3.5])  # batch i seen after i updates
    x, y = window_curve([0.9, 0.6, 0.3, 0.3], 3)
    np.testing.assert_allclose(y, [0.6, 0.4]) and np.testing.assert_allclose(x, [1.0, 2.0])
    assert len(window_curve([0.5], 3)[0]) == 0


def test_four_layer_net_trains_to_an_interpolated_target(small_cifar):
    data = load_cifar10(small_cifar)
    x, y = prepare_inputs(data["train"][0]), torch.from_numpy(data["train"][1])
    assert FourLayerNet("tanh")(x[:2]).shape == (2, 10)
    assert len(list(FourLayerNet().parameters())) == 8  # four layers with weights
    run = train_curve(x, y, "relu", 0.01, epochs=20, target=0.7, batch_size=16, window=3)
    assert run["iterations_per_epoch"] == 15 and run["errors"][-1] < run["errors"][0]
    # the crossing recomputed here in float64 from the recorded batch errors: running mean of 3
    # batches at the middle batch's position, linear between the points either side of 0.7
    e = run["batch_errors"]
    means = [sum(e[i - 2:i + 1]) / 3 for i in range(2, len(e))]
    k = next(i for i, m in enumerate(means) if m <= 0.7)
    assert k > 0  # starts above the target
    expected = (k + 1) - (0.7 - means[k]) / (means[k - 1] - means[k])
    assert run["steps_to_target"] == pytest.approx(expected)
    assert run["epochs_to_target"] == pytest.approx(expected / 15)
    assert len(e) == -(-(k + 3) // 15) * 15  # stopped at the end of the epoch it crossed in
    assert run["curve_epochs"][k] == pytest.approx((k + 1) / 15) and run["curve_errors"][k] == pytest.approx(means[k])
    assert train_curve(x, y, "relu", 1e8, epochs=2, batch_size=16)["diverged"]


def test_relu_vs_tanh_writes_the_figure_with_seeds(small_cifar, tmp_path):
    r = relu_vs_tanh(small_cifar, tmp_path / "fig1", lrs=(0.003, 0.01), trial_epochs=1, max_epochs=4,
                     target=0.85, device="cpu", seeds=2, log=lambda *a: None)
    assert set(r["runs"]) == {"relu", "tanh"} and all(len(runs) == 2 for runs in r["runs"].values())
    for name in ("relu", "tanh"):
        assert r["lr"][name] in (0.003, 0.01) and len(r["trials"][name]) == 2
        assert [run["seed"] for run in r["runs"][name]] == [0, 1]
        assert all(run["lr"] == r["lr"][name] for run in r["runs"][name])
    assert (tmp_path / "fig1" / "fig1.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "fig1" / "fig1.json").read_text())
    assert saved["target"] == 0.85
    expected = [t["epochs_to_target"] / u["epochs_to_target"] if t["epochs_to_target"] and u["epochs_to_target"]
                else None for t, u in zip(saved["runs"]["tanh"], saved["runs"]["relu"])]
    assert saved["ratio"]["per_seed"] == pytest.approx(expected)
    done = [v for v in expected if v is not None]
    assert saved["ratio"]["n"] == len(done)
    if len(done) == 2:
        assert saved["ratio"]["mean"] == pytest.approx(np.mean(done))
        assert saved["ratio"]["std"] == pytest.approx(np.std(done, ddof=1))


def test_ratio_text_states_the_spread():
    s = {"per_seed": [2.0, 3.0, None], "n": 2, "mean": 2.5, "std": 0.7071, "min": 2.0, "max": 3.0}
    assert ratio_text(s) == "2.50 ± 0.71 (range 2.00-3.00, 2 seeds; 1 did not reach it)"
    assert ratio_text({"per_seed": [None], "n": 0}).startswith("n/a")


def test_t_tail_matches_the_t_table():
    # two-sided 5% critical values of Student's t (any statistics table)
    for t, df in ((12.706, 1), (4.303, 2), (2.776, 4), (2.228, 10), (1.960, 1e6)):
        assert t_tail_two_sided(t, df) == pytest.approx(0.05, abs=2e-4)
    assert t_tail_two_sided(0.0, 3) == pytest.approx(1.0)
    assert t_tail_two_sided(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2
    assert t_tail_two_sided(2.5, 3.7) == pytest.approx(t_tail_two_sided(-2.5, 3.7))


def test_welch_test_by_hand():
    a, b = [0.10, 0.12, 0.14], [0.20, 0.21, 0.25]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    t, df, p = welch_t_test(a, b)
    assert t == pytest.approx((np.mean(a) - np.mean(b)) / np.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2))
    assert p == pytest.approx(t_tail_two_sided(t, df)) and p < 0.05
    assert welch_t_test([0.1, 0.3, 0.2], [0.2, 0.1, 0.3])[2] == pytest.approx(1.0)  # equal means
    assert welch_t_test([0.1], [0.2, 0.3]) is None
    stats = pytest.importorskip("scipy.stats")
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-6) and t == pytest.approx(ref.statistic)


def test_table_says_which_differences_exceed_the_seeds_spread(tmp_path):
    def row(name, seed, err):
        return {"experiment": name, "section": "§", "change": name, "base": "small", "data": "/d/store",
                "settings": "abc", "run": f"{name}-{seed}", "parameters": 10, "epochs": 3, "seed": seed,
                "top1_err": err, "top5_err": 0.0, "top1_err_10crop": err, "top5_err_10crop": 0.0, "train_err": 0.1,
                "images_per_s": 100.0, "date": "d", "commit": "c"}
    rows = [row("baseline", s, e) for s, e in enumerate((0.20, 0.21, 0.22))]
    rows += [row("no-lrn", s, e) for s, e in enumerate((0.30, 0.31, 0.32))]  # 10 points worse, spread 1
    rows += [row("no-dropout", s, e) for s, e in enumerate((0.15, 0.25, 0.20))]  # same mean, wide spread
    rows += [row("no-dropout", 2, 0.35)]  # a re-run of seed 2 replaces its row
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = write_table(tmp_path, list(EXPERIMENTS)).read_text().splitlines()
    assert "Welch" in table[0] and len(table) == 5
    base, no_lrn, no_dropout = table[2], table[3], table[4]
    assert "| baseline |" in base and "21.00% ± 1.00%" in base
    assert "| no-lrn |" in no_lrn and "+10.00 pts" in no_lrn and "| yes (p = " in no_lrn
    assert "| no-dropout |" in no_dropout and "| 0,1,2 |" in no_dropout
    assert f"{(np.mean([0.15, 0.25, 0.35]) - 0.21) * 100:+.2f} pts" in no_dropout and "| no (p = " in no_dropout


def _append_rows(results, name, count):
    from alexnet.experiments.ablations import _append_row
    for seed in range(count):
        _append_row(results, {"experiment": name, "section": "§", "change": name, "base": "small",
                              "data": "/d/store", "settings": "abc", "run": f"{name}-{seed}", "parameters": 10,
                              "epochs": 3, "seed": seed, "top1_err": 0.2, "top5_err": 0.0, "top1_err_10crop": 0.2,
                              "top5_err_10crop": 0.0, "train_err": 0.1, "images_per_s": 100.0, "date": "d",
                              "commit": "c"})


def test_two_commands_sharing_a_results_folder_leave_every_row_in_the_table(tmp_path):
    # arms split over two processes (two cores, two GPUs): before, both wrote results.md.tmp and one
    # crashed when the other renamed it away
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_rows, args=(tmp_path, name, 25)) for name in ("baseline", "no-lrn")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 50
    table = (tmp_path / "results.md").read_text()
    assert "| baseline |" in table and "| no-lrn |" in table and table.count(",".join(map(str, range(25)))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_each_fig1_trial_shows_progress(small_cifar, capsys):
    data = load_cifar10(small_cifar)
    x, y = prepare_inputs(data["train"][0][:64]), torch.from_numpy(data["train"][1][:64])
    train_curve(x, y, "tanh", 0.01, epochs=1, batch_size=16, progress=True, desc="tanh lr 0.01 trial")
    err = capsys.readouterr().err
    assert "tanh lr 0.01 trial" in err and "4/4" in err  # a bar over the trial's steps
    train_curve(x, y, "tanh", 0.01, epochs=1, batch_size=16)
    assert capsys.readouterr().err == ""


def test_an_interrupted_experiment_exits_with_the_signals_code(demo_store, tmp_path, monkeypatch, capsys):
    import alexnet.experiments.ablations as experiments

    calls = []

    def interrupted_fit(config, data, out, resume=False, progress=True):
        calls.append(config.train.seed)
        return {"status": "interrupted", "signal": "SIGTERM", "exit_code": 143, "history": []}

    monkeypatch.setattr(experiments, "fit", interrupted_fit)
    assert main(["experiment", "baseline", "no-lrn", "--data", str(demo_store), "--base", "tiny",
                 "--results", str(tmp_path / "res"), "--quiet", "--device", "cpu"]) == 143
    assert calls == [0]  # stopped at the first run: no other arm or seed started
    err = capsys.readouterr().err
    assert "interrupted (SIGTERM)" in err and "no row was written" in err
    assert not (tmp_path / "res" / "results.jsonl").exists()
