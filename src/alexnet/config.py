"""Every hyperparameter in one place, as frozen dataclasses whose defaults are the paper's.

A run is described by a `Config` with five sections (model, data, optim, schedule, train). Defaults
cite the section of Krizhevsky, Sutskever & Hinton (2012) they come from; a TOML file and dotted
overrides (`optim.lr=0.02`) change them, unknown keys are an error, and `train` writes the resolved
config next to its checkpoints (`config.toml`).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alexnet.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override the user wrote is wrong (unknown key, bad type, bad value)."""


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 1000  # §2: the 1000 ILSVRC classes
    input_size: int = 224  # §3.5, §4.1: 224x224 patches of the 256x256 images
    channels: tuple[int, ...] = (96, 256, 384, 384, 256)  # §3.5: kernels of conv1..conv5
    width: float = 1.0  # multiplier on every conv's kernel count (1.0 = Fig. 2); small variants use less
    fc_width: int = 4096  # §3.5: fc6 and fc7 have 4096 neurons each
    towers: int = 2  # §3.2: two GPUs; conv2, conv4, conv5 see only their own tower. 1 = footnote 2's net
    nonlinearity: Literal["relu", "tanh"] = "relu"  # §3.1 (tanh for the Fig. 1 comparison)
    lrn: bool = True  # §3.3: response normalisation after conv1 and conv2
    lrn_size: int = 5  # §3.3: n
    lrn_k: float = 2.0  # §3.3: k
    lrn_alpha: float = 1e-4  # §3.3: alpha, on the plain sum of squares as the formula prints it
    lrn_beta: float = 0.75  # §3.3: beta
    # cuda-convnet (the authors' code) divides alpha by n; torch.nn.LocalResponseNorm does too. The
    # paper prints the formula without. True reproduces the code, False (default) the paper.
    lrn_alpha_over_n: bool = False
    # §3.2: the GPUs communicate only at conv3 and the fc layers, so each normalises its own 48 maps:
    # the window stops at the tower boundary (N = 48). False runs it across all 96 maps (§3.3's N).
    lrn_within_towers: bool = True
    pool_size: int = 3  # §3.4: z, overlapping pooling (z=3 > s=2)
    pool_stride: int = 2  # §3.4: s
    dropout: float = 0.5  # §4.2: on fc6 and fc7
    extra_conv: bool = False  # §6: a sixth conv layer over the last pooling layer
    remove_conv: int = 0  # §7 ablation: drop conv 3, 4 or 5 (0 keeps all five)
    init_std: float = 0.01  # §5: weights ~ N(0, 0.01^2)
    init_bias: float = 1.0  # §5: biases of conv2, conv4, conv5, fc6, fc7 (others 0)
    # "paper": every layer N(0, init_std^2). "scaled": conv1 and fc8 as the paper, the layers between
    # N(0, 1/fan_in) (LeCun et al. 1998), which keeps the input's signal alive through the stack; see
    # README "Does the paper's initialisation train?" for why the paper's stalls on small nets.
    init_scheme: Literal["paper", "scaled"] = "paper"
    # Conventions of imported public weights (alexnet.pretrained); the defaults are this project's.
    # conv1's zero padding: 2 turns the 224 input into Fig. 2's 55x55 maps; Caffe's bvlc_alexnet feeds
    # 227 with none ((227 - 11) / 4 + 1 = 55).
    conv1_padding: int = 2
    # Caffe rounds a pooling layer's output size up (ceil), torch down; for the 55-27-13-6 maps of a 227
    # input both agree, other sizes differ by one map (a Caffe net keeps true so they match).
    pool_ceil: bool = False
    # §4.2 "paper": multiply by 1-p at test time. "inverted": scale by 1/(1-p) while training, nothing at
    # test time (nn.Dropout, Caffe and torchvision): the same test-time function for these weights.
    dropout_style: Literal["paper", "inverted"] = "paper"
    # Multiplier per RGB channel applied to the mean-subtracted input: torchvision's nets take
    # (x/255 - m)/s, which is (x - 255 m) * 1/(255 s) with 255 m as the mean image. () = no scaling.
    input_scale: tuple[float, ...] = ()
    # torchvision's AdaptiveAvgPool2d((6, 6)) after pool5 (identity for a 224 input, which already gives
    # 6x6 maps; other inputs are averaged to 6x6). 0 = none, as in the paper.
    adaptive_pool: int = 0


def _validate_source_conventions(model: ModelConfig) -> None:
    """Checks of the fields imported weights set (the lead calls this from the config validation)."""
    if model.conv1_padding < 0:
        raise ConfigError(f"model.conv1_padding must be >= 0, got {model.conv1_padding}")
    if model.input_scale and (len(model.input_scale) != 3 or min(model.input_scale) <= 0):
        raise ConfigError(f"model.input_scale needs three positive numbers (R, G, B) or none, got {model.input_scale}")
    if model.adaptive_pool < 0:
        raise ConfigError(f"model.adaptive_pool must be >= 0 (0 = none), got {model.adaptive_pool}")


@dataclass(frozen=True)
class DataConfig:
    # The patch size is model.input_size (§4.1: 224 of the store's 256), the image size the store's.
    flip: bool = True  # §4.1: horizontal reflections
    lighting_std: float = 0.1  # §4.1: alpha_i ~ N(0, 0.1); 0 turns the colour noise off
    # §4.1 prints the eigenvalue lambda_i as the magnitude. Of 0..255 pixels that is a colour shift
    # of hundreds of levels; the authors' code (cuda-convnet2 convdata.py, `color_stdevs`) scales by
    # the square root. "stddev" follows the code, "eigenvalue" the printed formula.
    lighting_magnitude: Literal["stddev", "eigenvalue"] = "stddev"
    # §2: "subtracting the mean activity over the training set from each pixel": the mean image at
    # the crop's own position. cuda-convnet2 subtracted the mean's centre crop from every patch.
    mean: Literal["aligned", "center"] = "aligned"
    workers: int = 0  # loader threads; 0 = one per core (up to 16)
    prefetch: int = 3  # batches the loader keeps ready


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.01  # §5: initial learning rate, equal for all layers
    momentum: float = 0.9  # §5
    weight_decay: float = 0.0005  # §5
    # §5 gives the rule "for weight w"; cuda-convnet's layer files set no weight cost on biases.
    decay_biases: bool = False
    rule: Literal["paper", "torch"] = "paper"  # "torch": torch.optim.SGD (differs when lr changes)


@dataclass(frozen=True)
class ScheduleConfig:
    # §5: "divide the learning rate by 10 when the validation error rate stopped improving ...
    # reduced three times prior to termination".
    kind: Literal["plateau", "step"] = "plateau"
    factor: float = 0.1  # §5: divide by 10
    patience: int = 4  # epochs without improvement before a drop (the paper judged by eye)
    threshold: float = 1e-3  # an epoch "improves" if top-1 error falls by more than this
    max_drops: int = 3  # §5: reduced three times
    milestones: tuple[int, ...] = (30, 60, 80)  # for kind="step": epochs at which lr is divided
    warmup_epochs: int = 0  # not in the paper; linear warm-up for large distributed batches


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 90  # §5: roughly 90 cycles through the training set
    batch_size: int = 128  # §5: global batch, split across processes under torchrun
    seed: int = 0
    device: str = "auto"  # "auto" = cuda if available else cpu; or "cpu", "cuda", "cuda:1"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto = on for CUDA
    compile: bool = False  # torch.compile the model
    model_parallel: int = 1  # §3.2: 2 puts one tower on each of two devices, as the paper's two GPUs
    devices: str = ""  # for model_parallel 2: "cuda:0,cuda:1" (default: the first two GPUs)
    eval_crops: int = 1  # validation during training: centre crop (1) or ten patches (10)
    checkpoint_every: int = 0  # also checkpoint every N steps mid-epoch (0 = at epoch ends only)
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit; for tests)
    log_every: int = 20  # steps between progress-bar updates of the running loss


@dataclass(frozen=True)
class Config:
    variant: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "variant"}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value read from TOML or a command line string to the field's type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (tuple,):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(v, inner, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported type {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def update_section(section: Any, values: dict[str, Any], name: str) -> Any:
    """A copy of a section dataclass with `values` applied; unknown keys are an error."""
    types_ = _field_types(type(section))
    changes = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in types_:
            known = ", ".join(types_)
            raise ConfigError(f"unknown key '{name}.{key}' (known: {known})")
        changes[key] = _coerce(value, types_[key], f"{name}.{key}")
    return dataclasses.replace(section, **changes)


def apply(config: Config, values: dict[str, Any]) -> Config:
    """Apply a nested dict ({"optim": {"lr": 0.02}, "variant": "small"}) onto a config."""
    out = config
    for key, value in values.items():
        if key == "variant":
            out = dataclasses.replace(out, variant=str(value))
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' must be a table of settings, got {value!r}")
            out = dataclasses.replace(out, **{key: update_section(getattr(out, key), value, key)})
        else:
            raise ConfigError(f"unknown config section '{key}' (known: variant, {', '.join(SECTIONS)})")
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["optim.lr=0.02", "model.lrn=false"]` -> nested dict of strings (types checked by apply)."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, value = item.split("=", 1)
        if dotted == "variant":
            nested["variant"] = value
            continue
        if dotted.count(".") != 1:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        section, key = dotted.split(".")
        nested.setdefault(section, {})[key] = value
    return nested


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(config: Config) -> str:
    """The config as TOML that `load_toml` + `apply` read back to an equal Config."""
    d = to_dict(config)
    lines = [f"variant = {_toml_value(d.pop('variant'))}"]
    for section, values in d.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (used to read the config stored in a checkpoint)."""
    return apply(Config(), d)


def resolve(*layers: dict[str, Any]) -> Config:
    """The config for a run: the variant's model (the last layer naming one wins, default "paper"),
    then each layer's settings in order (e.g. a TOML file, then command-line overrides)."""
    from alexnet.model import variant_config

    variant = "paper"
    for layer in layers:
        variant = str(layer.get("variant", variant))
    config = Config(variant=variant, model=variant_config(variant))
    for layer in layers:
        config = apply(config, {k: v for k, v in layer.items() if k != "variant"})
    return config
