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
