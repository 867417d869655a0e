import dataclasses

import pytest

from alexnet import config as C


def test_defaults_are_the_papers():
    c = C.Config()
    assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay) == (0.01, 0.9, 0.0005)
    assert c.train.batch_size == 128 and c.train.epochs == 90
    assert c.schedule.factor == 0.1 and c.schedule.max_drops == 3
    assert c.data.lighting_std == 0.1 and c.data.flip
    assert c.model.input_size == 224


def test_toml_round_trip(tmp_path):
    c = C.resolve({"variant": "small"}, {"optim": {"lr": 0.02}, "schedule": {"milestones": [5, 9]}})
    path = tmp_path / "config.toml"
    path.write_text(C.to_toml(c))
    back = C.resolve(C.load_toml(path))
    assert back == c
    assert C.from_dict(C.to_dict(c)) == c


def test_variant_sets_the_model_then_settings_override_it():
    c = C.resolve({"variant": "small", "model": {"width": 0.5}})
    assert c.model.input_size == 64 and c.model.width == 0.5 and c.model.fc_width == 512
    # a later layer's variant wins, and earlier model settings still apply on top of it
    c2 = C.resolve({"model": {"dropout": 0.0}}, {"variant": "one-tower"})
    assert c2.model.towers == 1 and c2.model.dropout == 0.0


def test_overrides_are_typed():
    c = C.resolve(C.parse_overrides(["optim.lr=0.5", "model.lrn=false", "train.epochs=3",
                                     "data.mean=center", "schedule.milestones=2,4"]))
    assert c.optim.lr == 0.5 and c.model.lrn is False and c.train.epochs == 3
    assert c.data.mean == "center" and c.schedule.milestones == (2, 4)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"optim": {"learning_rate": 0.1}}, "unknown key 'optim.learning_rate'"),
        ({"optimizer": {"lr": 0.1}}, "unknown config section 'optimizer'"),
        ({"optim": {"lr": "fast"}}, "expected a number"),
        ({"train": {"epochs": 2.5}}, "expected an integer"),
        ({"model": {"lrn": "maybe"}}, "expected true/false"),
        ({"data": {"mean": "median"}}, "not one of"),
        ({"variant": "vgg"}, "unknown variant"),
    ],
)
def test_bad_values_are_clear_errors(values, message):
    with pytest.raises((C.ConfigError, ValueError), match=message):
        C.resolve(values)


def test_bad_override_syntax_and_files(tmp_path):
    with pytest.raises(C.ConfigError, match="section.key=value"):
        C.parse_overrides(["lr=0.1"])
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr=1")
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        C.load_toml(bad)


def test_every_field_has_a_default_and_sections_are_frozen():
    c = C.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.optim.lr = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------
# Every value checked where the setting is defined
# ---------------------------------------------------------------------------------------------------

BAD = [
    ("model.num_classes", 0, ">= 1"),
    ("model.input_size", 20, ">= 63"),  # the paper's pooling: conv1 4, pool1 1, pool2 0 maps
    ("model.channels", "96,256,384,384", "five kernel counts"),
    ("model.channels", "96,0,384,384,256", "five kernel counts"),
    ("model.width", 0, "> 0"),
    ("model.fc_width", 0, ">= 1"),
    ("model.towers", 3, "1 or 2"),
    ("model.lrn_size", 4, "odd"),
    ("model.lrn_size", -1, "odd"),
    ("model.lrn_k", 0, "> 0"),
    ("model.lrn_alpha", -1e-4, ">= 0"),
    ("model.lrn_beta", -0.5, ">= 0"),
    ("model.pool_size", 0, ">= 1"),
    ("model.pool_stride", 0, ">= 1"),
    ("model.dropout", 1.5, "[0, 1)"),
    ("model.dropout", 1.0, "[0, 1)"),
    ("model.remove_conv", 2, "0 or 3 or 4 or 5"),
    ("model.init_std", 0, "> 0"),
    ("model.init_bias", "nan", "finite"),
    ("data.lighting_std", -0.1, ">= 0"),
    ("data.workers", -1, ">= 0"),
    ("data.prefetch", 0, ">= 1"),
    ("optim.lr", -1, "> 0"),
    ("optim.lr", "inf", "finite"),
    ("optim.momentum", 1.0, "[0, 1)"),
    ("optim.weight_decay", -1e-4, ">= 0"),
    ("schedule.factor", 1.0, "(0, 1)"),
    ("schedule.factor", 0, "(0, 1)"),
    ("schedule.patience", -1, ">= 0"),
    ("schedule.threshold", -1, ">= 0"),
    ("schedule.max_drops", -1, ">= 0"),
    ("schedule.milestones", "60,30", "increasing"),
    ("schedule.milestones", "0,30", "positive"),
    ("schedule.warmup_epochs", -1, ">= 0"),
    ("train.epochs", 0, ">= 1"),
    ("train.batch_size", 0, ">= 1"),
    ("train.seed", -1, ">= 0"),
    ("train.device", "tpu", "cuda:N"),
    ("train.model_parallel", 3, "1 or 2"),
    ("train.devices", "cuda:0", "two devices"),
    ("train.eval_crops", 5, "1 or 10"),
    ("train.checkpoint_every", -1, ">= 0"),
    ("train.max_steps", -1, ">= 0"),
    ("train.log_every", 0, ">= 1"),
]


@pytest.mark.parametrize("key, value, allowed", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_every_bad_value_is_refused_naming_key_value_and_what_is_allowed(key, value, allowed):
    section, name = key.split(".")
    for make in (lambda: C.resolve({section: {name: value}}),
                 lambda: C.apply(C.Config(), {section: {name: value}}),
                 lambda: C.from_dict({section: {name: value}})):
        with pytest.raises(C.ConfigError) as e:
            make()
        message = str(e.value)
        assert message.startswith(f"{key}=") and allowed in message, message
        assert "\n" not in message


@pytest.mark.parametrize("values", [
    {"model": {"input_size": 63, "dropout": 0.0, "lrn_size": 1, "towers": 1, "remove_conv": 5}},
    {"optim": {"momentum": 0.0, "weight_decay": 0.0}, "data": {"lighting_std": 0.0, "workers": 0}},
    {"schedule": {"milestones": [], "patience": 0}, "train": {"eval_crops": 10, "max_steps": 0}},
    {"train": {"device": "cuda:1", "model_parallel": 2, "devices": "cuda:0, cuda:1"}},
    {"model": {"pool_size": 2, "pool_stride": 2, "input_size": 67}},  # §3.4's s = z = 2
])
def test_edge_values_that_are_allowed_pass(values):
    C.resolve({"variant": "tiny"}, values)


def test_smallest_input_follows_the_pooling():
    # conv1: (n + 4 - 11) // 4 + 1, then three pools (z=3, s=2) each need >= 3 maps: conv1 >= 15, n >= 63.
    assert C.smallest_input_size(C.ModelConfig()) == 63
    with pytest.raises(C.ConfigError, match=r"model.input_size=62: must be >= 63"):
        C.resolve({"model": {"input_size": 62}})
    # non-overlapping pools of 2 need conv1 >= 8 maps: (n - 7) // 4 + 1 >= 8 -> n >= 35
    assert C.smallest_input_size(C.ModelConfig(pool_size=2, pool_stride=2)) == 35


def test_validate_sees_values_that_bypass_the_text_parser():
    bad = dataclasses.replace(C.Config(), model=C.ModelConfig(nonlinearity="sigmoid"))  # type: ignore[arg-type]
    with pytest.raises(C.ConfigError, match="model.nonlinearity=sigmoid: must be relu or tanh"):
        C.validate(bad)
    with pytest.raises(C.ConfigError, match="train.epochs=True: must be an integer"):
        C.validate(dataclasses.replace(C.Config(), train=C.TrainConfig(epochs=True)))
    assert C.validate(C.Config()) == C.Config()


def test_model_parallel_needs_the_two_towers_of_fig2():
    with pytest.raises(C.ConfigError, match="train.model_parallel=2: needs model.towers = 2"):
        C.resolve({"variant": "one-tower", "train": {"model_parallel": 2}})
    with pytest.raises(C.ConfigError, match="needs model.lrn_within_towers = true"):
        C.resolve({"model": {"lrn_within_towers": False}, "train": {"model_parallel": 2}})
    C.resolve({"model": {"lrn_within_towers": False, "lrn": False}, "train": {"model_parallel": 2}})


def test_variant_registry_lives_in_config_and_model_re_exports_it():
    import alexnet.model as model

    assert model.VARIANTS is C.VARIANTS and C.variant_config("tiny").width == 0.125
    with pytest.raises(C.ConfigError, match="unknown variant 'vgg' \\(known: paper, one-tower"):
        C.resolve({"variant": "vgg"})


def test_resume_refuses_changes_to_the_net_and_the_data():
    run = C.resolve({"variant": "tiny", "train": {"epochs": 2}})
    cont = C.resume_config(run, {"train": {"epochs": "5"}, "optim": {"lr": "0.001"}, "data": {"workers": "2"}})
    assert (cont.train.epochs, cont.optim.lr, cont.data.workers, cont.model) == (5, 0.001, 2, run.model)
    assert C.resume_config(run, {"variant": "tiny", "model": {"input_size": "64"}}) == run  # same values
    for overrides, key in [({"variant": "paper"}, "variant=paper"),
                           ({"model": {"input_size": "48"}}, "model.input_size=48"),
                           ({"model": {"lrn": "false"}}, "model.lrn=False"),
                           ({"data": {"lighting_std": "0"}}, "data.lighting_std=0.0"),
                           ({"data": {"mean": "center"}}, "data.mean=center")]:
        with pytest.raises(C.ConfigError, match="a resumed run keeps its net and data") as e:
            C.resume_config(run, overrides)
        assert str(e.value).startswith(key + ":"), str(e.value)
    with pytest.raises(C.ConfigError, match="train.epochs=0"):
        C.resume_config(run, {"train": {"epochs": "0"}})


def test_config_that_is_a_folder_or_unreadable(tmp_path):
    with pytest.raises(C.ConfigError, match="is a folder; give a TOML file"):
        C.load_toml(tmp_path)
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe lr = 1")
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        C.load_toml(binary)


def test_paper_variants_keep_the_papers_recipe():
    """Only the net changes between paper, one-tower and six-conv: every other section is §5's."""
    for name in ("paper", "one-tower", "six-conv"):
        c = C.resolve({"variant": name})
        assert c == C.Config(variant=name, model=C.VARIANTS[name])
        assert name not in C.RECIPES


def test_variant_recipe_comes_before_the_users_settings():
    assert C.RECIPES["small"], "small changes §5's recipe for small data (README: training small)"
    c = C.resolve({"variant": "small"})
    for section, values in C.RECIPES["small"].items():
        for key, value in values.items():
            assert getattr(getattr(c, section), key) == value
            assert getattr(getattr(C.Config(), section), key) != value, f"{section}.{key} repeats the paper's"
    section, values = next(iter(C.RECIPES["small"].items()))
    key = next(iter(values))
    mine = 7 if isinstance(values[key], int) and not isinstance(values[key], bool) else values[key]
    if isinstance(mine, float):
        mine = mine * 3
    # the user's file or flag wins over the recipe, whatever the order the layers name the variant in
    assert getattr(getattr(C.resolve({"variant": "small"}, {section: {key: mine}}), section), key) == mine
    assert getattr(getattr(C.resolve({section: {key: mine}}, {"variant": "small"}), section), key) == mine
    # a config saved by a run reads back to itself (the recipe is not applied twice or dropped)
    assert C.from_dict(C.to_dict(c)) == c and C.resolve(C.to_dict(c)) == c


def test_variant_help_shows_each_recipe():
    text = C.variant_help()
    for name in C.VARIANTS:
        assert name in text
    for section, values in C.RECIPES["small"].items():
        for key, value in values.items():
            assert f"{section}.{key}={C.show(value)}" in text


@pytest.mark.parametrize("recipes, message", [
    ({"vgg": {}}, "RECIPES\\['vgg'\\]"),
    ({"small": {"model": {"dropout": 0.0}}}, "leaves its model to VARIANTS"),
    ({"small": {"optim": {"lr": -1.0}}}, "optim.lr=-1.0"),
    ({"small": {"optim": {"learning_rate": 0.1}}}, "unknown key 'optim.learning_rate'"),
])
def test_bad_recipes_are_refused(recipes, message):
    with pytest.raises(C.ConfigError, match=message):
        C.check_recipes(recipes)


def test_a_toml_value_nested_100000_arrays_deep_is_one_line(tmp_path, capsys):
    """tomllib recurses once per array: 100,000 deep is a RecursionError, not a traceback."""
    from alexnet.cli.commands import main

    deep = tmp_path / "deep.toml"
    deep.write_text("[optim]\nlr = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(C.ConfigError, match="deep.toml is not a config: its values are nested too deeply"):
        C.load_toml(deep)
    assert main(["train", "--config", str(deep), "--data", str(tmp_path / "store"), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet train: error: ") and "nested too deeply" in err
