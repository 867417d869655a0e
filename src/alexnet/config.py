"""Every hyperparameter in one place, as frozen dataclasses whose defaults are the paper's.

A run is described by a `Config` with five sections (model, data, optim, schedule, train). Defaults
cite the section of Krizhevsky, Sutskever & Hinton (2012) they come from; a TOML file and dotted
overrides (`optim.lr=0.02`) change them, unknown keys are an error, and `train` writes the resolved
config next to its checkpoints (`config.toml`).

A setting lives here whole: its field and default, its comment (the help of its command-line flag,
alexnet/cli/flags.py), the values it admits (`RULES`, checked by `validate` on every config `resolve`,
`apply` and `from_dict` return) and, for the model, the named `VARIANTS` and the geometry.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from alexnet.errors import UserError

VERSION = "0.1.0"  # the package's (pyproject.toml's); runs and checkpoints record it; alexnet.__version__


# ---------------------------------------------------------------------------------------------------
# Settings as text (TOML files, overrides, TOML written back)
# ---------------------------------------------------------------------------------------------------

class ConfigError(UserError, ValueError):
    """A config file or override the user wrote is wrong (unknown key, bad type, bad value)."""


def coerce(value: Any, tp: Any, where: str) -> Any:
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
        return tuple(coerce(v, inner, where) for v in value)
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


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def type_problem(value: Any, tp: Any) -> str | None:
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return None if value in choices else "must be " + " or ".join(map(str, choices))
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, tuple):
            return f"must be a list of {inner.__name__}s"
        problems = [type_problem(v, inner) for v in value]
        return next((f"every element {p}" for p in problems if p), None)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    if tp is int and isinstance(value, bool):
        return "must be an integer"
    return None if isinstance(value, tp) else f"must be of type {tp.__name__}"


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
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a TOML file")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"config file {path} is not a config: its values are nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def update_section(section: Any, values: dict[str, Any], name: str) -> Any:
    """A copy of a section dataclass with `values` applied; unknown keys are an error."""
    types_ = field_types(type(section))
    changes = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in types_:
            known = ", ".join(types_)
            raise ConfigError(f"unknown key '{name}.{key}' (known: {known})")
        changes[key] = coerce(value, types_[key], f"{name}.{key}")
    return dataclasses.replace(section, **changes)


def toml_text(d: dict[str, Any]) -> str:
    """A {"variant": ..., section: {key: value}} dict as TOML that `load_toml` reads back."""
    d = dict(d)
    lines = [f"variant = {toml_value(d.pop('variant'))}"]
    for section, values in d.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


# What a setting admits: a rule maps a value to None if allowed, else what is allowed (config.RULES).
Rule = Callable[[Any], "str | None"]  # the value -> None if allowed, else what is allowed


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be >= {low}"


def above(low: float) -> Rule:
    return lambda v: None if v > low else f"must be > {low}"


def one_of(*choices: Any) -> Rule:
    return lambda v: None if v in choices else "must be " + " or ".join(map(str, choices))


def probability(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


# ---------------------------------------------------------------------------------------------------
# The net's geometry (§3.5, Fig. 2), which validate() checks
# ---------------------------------------------------------------------------------------------------

class NetShape(Protocol):
    """The fields of alexnet.config.ModelConfig that decide the shape."""

    input_size: int
    channels: tuple[int, ...]
    width: float
    towers: int
    pool_size: int
    pool_stride: int
    pool_ceil: bool
    conv1_padding: int
    adaptive_pool: int
    extra_conv: bool


def conv_channels(config: NetShape) -> list[int]:
    """Kernels per conv layer after the width multiplier, each rounded to a multiple of the tower
    count (so each tower gets the same number; never fewer than one per tower)."""
    if len(config.channels) != 5:
        raise ConfigError(f"model.channels needs five kernel counts (conv1..conv5), got {config.channels}")
    t = config.towers
    return [max(t, int(round(c * config.width / t)) * t) for c in config.channels]


def map_sizes(config: NetShape) -> dict[str, int]:
    """Side of every layer's maps for the configured input (Fig. 2: 55-27-27-13-13-13-13-6). conv1
    is 11x11, stride 4, padding model.conv1_padding (model.layer_spec); conv2..conv6 keep the size of
    their input."""
    z, s = config.pool_size, config.pool_stride

    def pooled(n: int) -> int:
        if not config.pool_ceil:
            return (n - z) // s + 1
        out = -(-(n - z) // s) + 1  # Caffe's ceil; torch's ceil_mode drops a window starting past the end
        return out - 1 if (out - 1) * s >= n else out

    sizes = {"input": config.input_size}
    sizes["conv1"] = (config.input_size + 2 * config.conv1_padding - 11) // 4 + 1
    sizes["pool1"] = pooled(sizes["conv1"])
    sizes["conv2"] = sizes["pool1"]
    sizes["pool2"] = pooled(sizes["conv2"])
    sizes["conv3"] = sizes["conv4"] = sizes["conv5"] = sizes["pool2"]
    sizes["pool5"] = pooled(sizes["conv5"])
    if config.adaptive_pool:
        sizes["avgpool"] = config.adaptive_pool
    if config.extra_conv:
        sizes["conv6"] = sizes.get("avgpool", sizes["pool5"])
    return sizes


def smallest_input_size(config: NetShape) -> int:
    """The smallest input whose maps are all non-empty with this pooling (63 for the paper's)."""
    size = 1
    while min(map_sizes(dataclasses.replace(config, input_size=size)).values()) < 1:  # type: ignore[type-var]
        size += 1
    return size


# ---------------------------------------------------------------------------------------------------
# The settings
# ---------------------------------------------------------------------------------------------------



def setting(default: Any, help: str) -> Any:
    """A field of a config section with its help text: what `alexnet train --help` shows for its flag
    (alexnet/cli/flags.py reads it from the field's metadata), written once, beside the default."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    """The network (§3, Fig. 2). The defaults are the paper net's; a variant (VARIANTS) sets its own."""

    num_classes: int = setting(1000, "§2: the 1000 ILSVRC classes")
    input_size: int = setting(224, "§3.5, §4.1: 224x224 patches of the 256x256 images")
    channels: tuple[int, ...] = setting((96, 256, 384, 384, 256), "§3.5: kernels of conv1..conv5")
    width: float = setting(1.0, "multiplier on every conv's kernel count (1.0 = Fig. 2); small variants use less")
    fc_width: int = setting(4096, "§3.5: fc6 and fc7 have 4096 neurons each")
    towers: int = setting(2, "§3.2: two GPUs; conv2, conv4, conv5 see only their own tower. 1 = footnote 2's net")
    nonlinearity: Literal["relu", "tanh"] = setting("relu", "§3.1 (tanh for the Fig. 1 comparison)")
    lrn: bool = setting(True, "§3.3: response normalisation after conv1 and conv2")
    lrn_size: int = setting(5, "§3.3: n")
    lrn_k: float = setting(2.0, "§3.3: k")
    lrn_alpha: float = setting(1e-4, "§3.3: alpha, on the plain sum of squares as the formula prints it")
    lrn_beta: float = setting(0.75, "§3.3: beta")
    lrn_alpha_over_n: bool = setting(False, "cuda-convnet (the authors' code) divides alpha by n; "
                                            "torch.nn.LocalResponseNorm does too. The paper prints the formula "
                                            "without. True reproduces the code, False (default) the paper.")
    lrn_within_towers: bool = setting(True, "§3.2: the GPUs communicate only at conv3 and the fc layers, so each "
                                            "normalises its own 48 maps: the window stops at the tower boundary (N = "
                                            "48). False runs it across all 96 maps (§3.3's N).")
    pool_size: int = setting(3, "§3.4: z, overlapping pooling (z=3 > s=2)")
    pool_stride: int = setting(2, "§3.4: s")
    dropout: float = setting(0.5, "§4.2: on fc6 and fc7")
    extra_conv: bool = setting(False, "§6: a sixth conv layer over the last pooling layer")
    remove_conv: int = setting(0, "§7 ablation: drop conv 3, 4 or 5 (0 keeps all five)")
    init_std: float = setting(0.01, "§5: weights ~ N(0, 0.01^2)")
    init_bias: float = setting(1.0, "§5: biases of conv2, conv4, conv5, fc6, fc7 (others 0)")
    init_scheme: Literal["paper", "scaled"] = setting("paper", "\"paper\": every layer N(0, init_std^2). \"scaled\": "
                                                               "conv1 and fc8 as the paper, the layers between N(0, "
                                                               "1/fan_in) (LeCun et al. 1998), which keeps the "
                                                               "input's signal alive through the stack; see README "
                                                               "\"Does the paper's initialisation train?\" for why the "
                                                               "paper's stalls on small nets.")
    conv1_padding: int = setting(2, "Conventions of imported public weights (alexnet.pretrained); the defaults are "
                                    "this project's. conv1's zero padding: 2 turns the 224 input into Fig. 2's 55x55 "
                                    "maps; Caffe's bvlc_alexnet feeds 227 with none ((227 - 11) / 4 + 1 = 55).")
    pool_ceil: bool = setting(False, "Caffe rounds a pooling layer's output size up (ceil), torch down; for the "
                                     "55-27-13-6 maps of a 227 input both agree, other sizes differ by one map (a "
                                     "Caffe net keeps true so they match).")
    dropout_style: Literal["paper", "inverted"] = setting("paper", "§4.2 \"paper\": multiply by 1-p at test time. "
                                                                   "\"inverted\": scale by 1/(1-p) while training, "
                                                                   "nothing at test time (nn.Dropout, Caffe and "
                                                                   "torchvision): the same test-time function for "
                                                                   "these weights.")
    input_scale: tuple[float, ...] = setting((), "Multiplier per RGB channel applied to the mean-subtracted input: "
                                                 "torchvision's nets take (x/255 - m)/s, which is (x - 255 m) * "
                                                 "1/(255 s) with 255 m as the mean image. () = no scaling.")
    adaptive_pool: int = setting(0, "torchvision's AdaptiveAvgPool2d((6, 6)) after pool5 (identity for a 224 input, "
                                    "which already gives 6x6 maps; other inputs are averaged to 6x6). 0 = none, as in "
                                    "the paper.")


@dataclass(frozen=True)
class DataConfig:
    """What the net sees: preprocessing and augmentation (§2, §4.1), and the loader."""

    # The patch size is model.input_size (§4.1: 224 of the store's 256), the image size the store's.
    flip: bool = setting(True, "§4.1: horizontal reflections")
    lighting_std: float = setting(0.1, "§4.1: alpha_i ~ N(0, 0.1); 0 turns the colour noise off")
    lighting_magnitude: Literal["stddev", "eigenvalue"] = setting("stddev", "§4.1 prints the eigenvalue lambda_i as "
                                                                            "the magnitude. Of 0..255 pixels that is "
                                                                            "a colour shift of hundreds of levels; "
                                                                            "the authors' code (cuda-convnet2 "
                                                                            "convdata.py, `color_stdevs`) scales by "
                                                                            "the square root. \"stddev\" follows the "
                                                                            "code, \"eigenvalue\" the printed formula.")
    mean: Literal["aligned", "center"] = setting("aligned", "§2: \"subtracting the mean activity over the training set "
                                                            "from each pixel\": the mean image at the crop's own "
                                                            "position. cuda-convnet2 subtracted the mean's centre "
                                                            "crop from every patch.")
    workers: int = setting(0, "loader threads; 0 = 2 for a raw store, one per core (up to 16; under torchrun "
                              "the process's share of the cores) for a jpeg one")
    prefetch: int = setting(3, "batches the loader gathers ahead of the one in use (at least one per loader thread)")
    finetune_mean: Literal["source", "store"] = setting("source", "§6 fine-tuning (--finetune): subtract the source "
                                                                  "net's mean image, which its weights expect "
                                                                  "(\"source\"), or the new store's (\"store\")")


@dataclass(frozen=True)
class OptimConfig:
    """Stochastic gradient descent with momentum and weight decay (§5)."""

    lr: float = setting(0.01, "§5: initial learning rate, equal for all layers")
    momentum: float = setting(0.9, "§5")
    weight_decay: float = setting(0.0005, "§5")
    decay_biases: bool = setting(False, "§5 gives the rule \"for weight w\"; cuda-convnet's layer files set no weight "
                                        "cost on biases.")
    rule: Literal["paper", "torch"] = setting("paper", "\"torch\": torch.optim.SGD (differs when lr changes)")


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning rate's schedule (§5)."""

    kind: Literal["plateau", "step"] = setting("plateau", "§5: \"divide the learning rate by 10 when the validation "
                                                          "error rate stopped improving ... reduced three times prior "
                                                          "to termination\".")
    factor: float = setting(0.1, "§5: divide by 10")
    patience: int = setting(4, "epochs without improvement before a drop (the paper judged by eye)")
    threshold: float = setting(1e-3, "an epoch \"improves\" if top-1 error falls by more than this")
    max_drops: int = setting(3, "§5: reduced three times")
    milestones: tuple[int, ...] = setting((30, 60, 80), "for kind=\"step\": epochs at which lr is divided")
    warmup_epochs: int = setting(0, "not in the paper; linear warm-up for large distributed batches")


@dataclass(frozen=True)
class TrainConfig:
    """How the run is carried out: length, batch, devices, precision, checkpoints."""

    epochs: int = setting(90, "§5: roughly 90 cycles through the training set")
    batch_size: int = setting(128, "§5: global batch, split across processes under torchrun")
    seed: int = setting(0, "seeds the init, the data order and the augmentation (a run repeats exactly)")
    device: str = setting("auto", "\"auto\" = cuda if available else cpu; or \"cpu\", \"cuda\", \"cuda:1\"")
    amp: Literal["auto", "bf16", "off"] = setting("auto", "auto = bf16 on CUDA and AMX CPUs "
                                                          "(runtime.use_bf16_autocast)")
    channels_last: Literal["auto", "on", "off"] = setting("auto", "auto = on (CPU and CUDA: max pooling 3-6x faster "
                                                                  "on the CPU)")
    compile: bool = setting(False, "torch.compile the model")
    model_parallel: int = setting(1, "§3.2: 2 puts one tower on each of two devices, as the paper's two GPUs")
    devices: str = setting("", "for model_parallel 2: \"cuda:0,cuda:1\" (default: the first two GPUs)")
    eval_crops: int = setting(1, "validation during training: centre crop (1) or ten patches (10)")
    checkpoint_every: int = setting(0, "also checkpoint every N steps mid-epoch (0 = at epoch ends only)")
    max_steps: int = setting(0, "stop after this many optimizer steps in total (0 = no limit; for tests)")
    log_every: int = setting(20, "steps between progress-bar updates of the running loss (under torchrun also "
                                 "how often the processes agree on stopping: a Ctrl-C or a NaN loss)")
    deterministic: bool = setting(False, "CUDA: deterministic cuDNN and cuBLAS and torch.use_deterministic_algorithms, "
                                         "no cudnn.benchmark: a resumed run repeats the uninterrupted one bit for "
                                         "bit (slower; the CPU is deterministic either way)")
    tf32: bool = setting(False, "CUDA: let float32 matmuls and convolutions use TF32 tensor cores (10-bit "
                                "mantissa); off, --amp off is float32 throughout (PyTorch's default lets cuDNN "
                                "convolutions use TF32)")


@dataclass(frozen=True)
class Config:
    variant: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {name: tp for name, tp in typing.get_type_hints(Config).items() if name != "variant"}

# Short command-line names of the most used settings; every setting also has its own
# --section.key flag (alexnet/cli/flags.py generates them all from the fields above).
FLAG_ALIASES = {
    "epochs": "train.epochs", "batch-size": "train.batch_size", "lr": "optim.lr", "crop-size": "model.input_size",
    "workers": "data.workers", "device": "train.device", "seed": "train.seed", "amp": "train.amp",
    "channels-last": "train.channels_last", "compile": "train.compile", "schedule": "schedule.kind",
    "patience": "schedule.patience", "eval-crops": "train.eval_crops", "checkpoint-every": "train.checkpoint_every",
    "max-steps": "train.max_steps", "model-parallel": "train.model_parallel", "devices": "train.devices",
}

# ---------------------------------------------------------------------------------------------------
# Named variants of the net (all built by the one AlexNet class, never copies of it)
# ---------------------------------------------------------------------------------------------------

VARIANTS: dict[str, ModelConfig] = {
    # §3.5, Fig. 2: two towers, 60,965,224 parameters.
    "paper": ModelConfig(),
    # §3.2 footnote 2: one GPU, half the kernels in every conv layer but the last (and full fc layers).
    "one-tower": ModelConfig(towers=1, channels=(48, 128, 192, 192, 256)),
    # §6: a sixth conv layer over the last pooling layer (the net pre-trained on ImageNet Fall 2011).
    "six-conv": ModelConfig(extra_conv=True),
    # For CPUs: 64x64 patches (the smallest size the geometry allows is 63), a quarter of the kernels,
    # 512-wide fc layers; same layers, LRN, pooling and dropout as the paper. With the paper's init it
    # sat at loss ln(10) for 150 epochs of the demo data (README: "Does the paper's initialisation
    # train?"), so its hidden layers start from N(0, 1/fan_in).
    "small": ModelConfig(input_size=64, width=0.25, fc_width=512, init_scheme="scaled"),
    # Smallest useful net, for tests and smoke runs.
    "tiny": ModelConfig(input_size=64, width=0.125, fc_width=64, init_scheme="scaled"),
}


# A variant's recipe: the settings of the other sections (data, optim, schedule, train) it changes
# from the paper's, where §5's recipe, made for 10,000 steps an epoch, does not fit the net or the data
# it is for. `resolve` applies them after the variant's model and before the user's file and flags
# (which win); they are checked when this module loads (`check_recipes`). paper, one-tower and
# six-conv have none: theirs is the paper's.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        # §5's 128 gives 11 steps an epoch on 1,438 images (the UCI digits): the net sat at chance for
        # 3-5 epochs and ended 10 at 11-24% error (3 seeds). 64 gives 23 steps an epoch, left chance
        # after 3 and ended at 7-9%; 32 at 9-13% (docs/experiments/digits.md). The plateau
        # patience stays: 1 annealed the digits better (7.5%) but spent all three drops in the demo's
        # first 13 epochs on noise in its validation error, which then ended at 8% instead of 0.2%.
        "train": {"batch_size": 64},
    },
}


def variant_config(name: str) -> ModelConfig:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown variant '{name}' (known: {', '.join(VARIANTS)})") from None


def variant_help() -> str:
    """Each variant and the recipe settings it changes, for `--variant`'s help."""
    def recipe(name: str) -> str:
        items = [f"{s}.{k}={show(v)}" for s, values in RECIPES.get(name, {}).items() for k, v in values.items()]
        return f" ({', '.join(items)})" if items else ""
    return "; ".join(name + recipe(name) for name in VARIANTS)


# ---------------------------------------------------------------------------------------------------
# What each setting admits: checked by `validate` on every config resolve/apply/from_dict returns
# ---------------------------------------------------------------------------------------------------
DEVICE = r"auto|cpu|mps|(cuda|xpu)(:\d+)?"


def _device(v: str) -> str | None:
    return None if re.fullmatch(DEVICE, v) else "must be auto, cpu, cuda, cuda:N, mps or xpu:N"


def _devices(v: str) -> str | None:
    parts = [p.strip() for p in v.split(",")]
    ok = v == "" or (len(parts) == 2 and all(p != "auto" and re.fullmatch(DEVICE, p) for p in parts))
    return None if ok else "must be empty (the first two GPUs) or two devices, e.g. cuda:0,cuda:1"


def _milestones(v: tuple[int, ...]) -> str | None:
    ok = all(m >= 1 for m in v) and all(a < b for a, b in zip(v, v[1:]))
    return None if ok else "must be positive epochs in increasing order"


RULES: dict[str, Rule] = {
    "model.num_classes": at_least(1),
    "model.input_size": at_least(1),  # and large enough for the geometry (`validate`)
    "model.channels": lambda v: None if len(v) == 5 and min(v) >= 1 else "must be five kernel counts >= 1",
    "model.width": above(0),
    "model.fc_width": at_least(1),
    "model.towers": one_of(1, 2),  # §3.2: the paper's two GPUs, or footnote 2's one
    "model.lrn_size": lambda v: None if v >= 1 and v % 2 else "must be odd and >= 1 (a window centred on a map)",
    # k > 0: ReLU leaves whole columns of maps at 0, and k = 0 would then divide 0 by 0.
    "model.lrn_k": above(0),
    "model.lrn_alpha": at_least(0),
    "model.lrn_beta": at_least(0),
    "model.pool_size": at_least(1),
    "model.pool_stride": at_least(1),
    "model.dropout": probability,
    "model.remove_conv": one_of(0, 3, 4, 5),
    "model.init_std": above(0),  # 0 would make every kernel of a layer the same, for good
    "model.conv1_padding": at_least(0),
    "model.input_scale": lambda v: None if v == () or (len(v) == 3 and min(v) > 0) else
    "must be three positive numbers (R, G, B), or none",
    "model.adaptive_pool": at_least(0),  # 0: none
    "data.lighting_std": at_least(0),
    "data.workers": at_least(0),
    "data.prefetch": at_least(1),
    "optim.lr": above(0),
    "optim.momentum": probability,
    "optim.weight_decay": at_least(0),
    "schedule.factor": lambda v: None if 0 < v < 1 else "must be in (0, 1)",
    "schedule.patience": at_least(0),
    "schedule.threshold": at_least(0),
    "schedule.max_drops": at_least(0),
    "schedule.milestones": _milestones,
    "schedule.warmup_epochs": at_least(0),
    "train.epochs": at_least(1),
    "train.batch_size": at_least(1),
    "train.seed": at_least(0),  # NumPy's generators take no negative seed
    "train.device": _device,
    "train.model_parallel": one_of(1, 2),
    "train.devices": _devices,
    "train.eval_crops": one_of(1, 10),  # §4.1: the centre patch, or the ten patches
    "train.checkpoint_every": at_least(0),
    "train.max_steps": at_least(0),
    "train.log_every": at_least(1),
}


def validate(config: Config) -> Config:
    """`config` if every value is one its setting admits, else ConfigError naming the first that is
    not: 'model.towers=3: must be 1 or 2'."""
    for name, cls in SECTIONS.items():
        section = getattr(config, name)
        for key, tp in field_types(cls).items():
            value = getattr(section, key)
            problem = type_problem(value, tp) or RULES.get(f"{name}.{key}", lambda v: None)(value)
            if problem:
                raise ConfigError(f"{name}.{key}={show(value)}: {problem}")
    m, t = config.model, config.train
    if min(map_sizes(m).values()) < 1:
        raise ConfigError(f"model.input_size={m.input_size}: must be >= {smallest_input_size(m)} for this "
                          f"pooling (z={m.pool_size}, s={m.pool_stride}), or the maps would be empty")
    problem = model_parallel_problem(m) if t.model_parallel == 2 else None
    if problem:
        raise ConfigError(f"train.model_parallel=2: {problem}")
    return config


def model_parallel_problem(m: ModelConfig) -> str | None:
    """Why the net of `m` cannot be split over two devices (§3.2: one tower of Fig. 2 on each), or
    None: the one place for these conditions (`validate`, and `TwoTowerAlexNet` for a net built by hand)."""
    needs = {"model.towers": (m.towers, 2), "model.remove_conv": (m.remove_conv, 0),
             "model.extra_conv": (m.extra_conv, False), "model.fc_width % 2": (m.fc_width % 2, 0),
             "model.conv1_padding": (m.conv1_padding, 2), "model.pool_ceil": (m.pool_ceil, False),
             "model.dropout_style": (m.dropout_style, "paper"), "model.input_scale": (m.input_scale, ()),
             "model.adaptive_pool": (m.adaptive_pool, 0)}
    if m.lrn:
        needs["model.lrn_within_towers"] = (m.lrn_within_towers, True)
    for key, (value, wanted) in needs.items():
        if value != wanted:
            return (f"needs {key} = {show(wanted).lower()} (§3.2: one tower of Fig. 2 on each device; an imported "
                    f"net's conventions are not split), got {show(value).lower()}")
    return None


# A resumed run keeps what defines its net and what it sees; the loader's speed may change.
RESUME_FREE = {"data.workers", "data.prefetch"}


def resume_config(run: Config, overrides: dict[str, Any]) -> Config:
    """The config to continue `run` with: `overrides` applied, refused (ConfigError) where they change
    the variant, the net (model.*) or the data (data.* but the loader's workers and prefetch)."""
    out = _apply(run, overrides)
    fixed = [("variant", run.variant, out.variant)] + [
        (f"{s}.{k}", getattr(getattr(run, s), k), getattr(getattr(out, s), k))
        for s in ("model", "data") for k in field_types(SECTIONS[s]) if f"{s}.{k}" not in RESUME_FREE]
    for key, before, after in fixed:
        if before != after:
            raise ConfigError(f"{key}={show(after)}: a resumed run keeps its net and data (this run has "
                              f"{show(before)}); start a new run, or --finetune from this one")
    return validate(out)


def _apply(config: Config, values: dict[str, Any]) -> Config:
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


def apply(config: Config, values: dict[str, Any]) -> Config:
    """Apply a nested dict ({"optim": {"lr": 0.02}, "variant": "small"}) onto a config, and validate."""
    return validate(_apply(config, values))


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_toml(config: Config) -> str:
    """The config as TOML that `load_toml` + `apply` read back to an equal Config."""
    return toml_text(to_dict(config))


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (used to read the config stored in a checkpoint)."""
    return apply(Config(), d)


def resolve(*layers: dict[str, Any]) -> Config:
    """The config for a run: the variant's model and recipe (the last layer naming one wins, default
    "paper"), then each layer's settings in order (e.g. a TOML file, then command-line overrides); validated
    once all are applied."""
    variant = "paper"
    for layer in layers:
        variant = str(layer.get("variant", variant))
    config = _apply(Config(variant=variant, model=variant_config(variant)), RECIPES.get(variant, {}))
    for layer in layers:
        config = _apply(config, {k: v for k, v in layer.items() if k != "variant"})
    return validate(config)


def check_recipes(recipes: dict[str, dict[str, dict[str, Any]]]) -> None:
    """ConfigError unless every recipe names a variant, leaves the model to VARIANTS and gives values
    its settings admit (run on RECIPES when this module loads)."""
    for name, recipe in recipes.items():
        if name not in VARIANTS or "model" in recipe:
            raise ConfigError(f"RECIPES['{name}']: a recipe belongs to a variant and leaves its model to VARIANTS")
        validate(_apply(Config(variant=name, model=VARIANTS[name]), recipe))


check_recipes(RECIPES)


# `alexnet experiment`: runs per ablation arm, with seeds S, S+1, ... Three is the fewest for which a
# spread over seeds, and Welch's test of a difference against it, can be computed with a df above 1.
EXPERIMENT_SEEDS = 3
