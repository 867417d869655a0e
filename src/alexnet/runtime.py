"""Device choices shared by the commands (process-wide settings: alexnet.machine)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import torch

from alexnet.errors import UserError

__all__ = ["capturing_graph", "cpu_bf16_is_default", "cpu_flags", "cpu_has_fast_bf16", "private_compile_cache",
           "private_folder", "resolve_device", "set_thread_count", "use_bf16_autocast", "thread_share",
           "training_math", "full_float32", "inference_precision"]


def capturing_graph() -> bool:
    """Whether torch is tracing, compiling or exporting the code that runs (rather than running it
    eagerly): such a graph keeps plain torch operations, which it can export or fuse, and its
    tensors may have no memory to hand to C."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or bool(exporting and exporting())


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"'{name}' is not a device (try cpu, cuda or cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but this machine has no CUDA GPU visible to torch")
    return device


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo; empty where there is no such file (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_fast_bf16(flags: Iterable[str]) -> bool:
    """Whether bf16 matrix products beat float32 ones on this CPU: with AMX tiles (amx_bf16) they run
    several times faster. AVX512-BF16 alone does not pay: on a Xeon with avx512_bf16 and no AMX the
    best bf16 matmul ran at 172 GFLOP/s against 329 in float32 (bench/ceiling.py), and a bf16 training
    step of the paper net was slower than a float32 one (bench/peer.py)."""
    return "amx_bf16" in set(flags)


# "1" makes "auto" resolve as on a CPU with AMX (bf16), "0" as on one without (float32), whatever this
# CPU is: to run the suite or a benchmark as the other kind of machine would.
FAST_BF16_SWITCH = "ALEXNET_CPU_FAST_BF16"


def cpu_bf16_is_default(flags: Iterable[str] | None = None, environ: dict | None = None) -> bool:
    """Whether "auto" means bf16 on a CPU with these `flags`; for this machine (flags None),
    FAST_BF16_SWITCH where set, else `cpu_has_fast_bf16` of its own flags."""
    if flags is not None:
        return cpu_has_fast_bf16(flags)
    forced = (os.environ if environ is None else environ).get(FAST_BF16_SWITCH, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_has_fast_bf16(cpu_flags())


def use_bf16_autocast(amp: str, device: torch.device, flags: Iterable[str] | None = None,
                      environ: dict | None = None) -> bool:
    """train.amp resolved for `device`: "bf16" and "off" as said; "auto" is bf16 autocast on CUDA and
    on CPUs with fast bf16 matmuls (`cpu_bf16_is_default`), float32 elsewhere. studies/bf16_error.py
    measures whether bf16 training reaches float32's error (docs/experiments/bf16.md)."""
    if amp != "auto":
        return amp == "bf16"
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return cpu_bf16_is_default(flags, environ)
    return False


def set_thread_count(threads: int) -> None:
    """torch's intra-op threads (OpenMP's and MKL's) from now on, and for child processes. Process-wide:
    a command's entry only (`alexnet train --resume` taking the run's own count)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def private_folder(folder: Path, what: str, hint: str) -> Path:
    """`folder` made 0700 (parents too) where missing, and refused in one line (UserError naming
    `what`, then `hint`) unless it is a folder of this user's own, not a link, closed to group and
    others: for folders whose files this process runs (compiled code)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(folder, follow_symlinks=False)
    except OSError as e:
        raise UserError(f"cannot make {what} {folder}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise UserError(f"{what} {folder} is not a folder of this user's own closed to group and others "
                        f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); {hint}")
    return folder


def private_compile_cache(environ: dict | None = None) -> Path:
    """A cache folder for torch.compile's generated code that only this user can write, set as
    TORCHINDUCTOR_CACHE_DIR (process-wide: a command's entry only). Inductor's default is
    /tmp/torchinductor_USER, made with exist_ok in a folder every user can write: another user who
    makes it first, with compiled libraries of theirs inside, gets their code run by `--compile`. The
    folder the user names in TORCHINDUCTOR_CACHE_DIR, else $XDG_CACHE_HOME/alexnet/torchinductor
    (~/.cache/...), is created 0700 and refused in one line unless it is this user's own and closed to
    group and others (`private_folder`)."""
    environ = os.environ if environ is None else environ
    given = environ.get("TORCHINDUCTOR_CACHE_DIR")
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = private_folder(Path(given) if given else base / "alexnet" / "torchinductor", "the compile cache",
                            "torch.compile would run the code in it: point TORCHINDUCTOR_CACHE_DIR at a private folder")
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def thread_share(cores: int, local_world: int) -> int:
    """Threads (and loader threads) for one of the `local_world` processes torchrun starts on a
    machine whose usable cores are `cores`: each its share, at least one. Every process sizing itself
    from all the cores would put local_world times as many threads as cores on the machine."""
    return max(1, cores // max(1, local_world))


@contextlib.contextmanager
def training_math(deterministic: bool = False, tf32: bool = False, environ: dict | None = None):
    """PyTorch's process-wide arithmetic settings for one training run (`train.deterministic`,
    `train.tf32`), made on entry and restored on exit, so that a program calling `fit` keeps its own:

    deterministic  cuDNN's deterministic algorithms and no autotuning (`cudnn.benchmark` off),
                   `torch.use_deterministic_algorithms(True)` (an op with no deterministic version is
                   an error naming it) and CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS's condition for
                   reproducible matmuls; read when cuBLAS starts, so set before any CUDA work) unless
                   already set. Off: `cudnn.benchmark` on, which times cuDNN's algorithms once per
                   shape and keeps the fastest (a run's shapes are fixed), and may pick another on
                   the next run, so the bits of a CUDA run are then not repeatable.
    tf32           whether float32 matmuls and convolutions on CUDA may use TF32 tensor cores (a
                   10-bit mantissa). PyTorch's own default lets cuDNN's convolutions use it and not
                   matmuls; here both follow the setting, off by default, so `--amp off` is float32
                   throughout. Under bf16 autocast it only touches the ops autocast keeps in float32.

    On the CPU none of these change a bit (a CPU run is repeatable as it is)."""
    environ = os.environ if environ is None else environ
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    set_workspace = deterministic and "CUBLAS_WORKSPACE_CONFIG" not in environ
    try:
        if set_workspace:
            environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        if deterministic:
            cudnn.deterministic = True
            torch.use_deterministic_algorithms(True)
        cudnn.benchmark = not deterministic
        cudnn.allow_tf32 = matmul.allow_tf32 = tf32
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        if set_workspace:
            environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


@contextlib.contextmanager
def full_float32():
    """float32 matmuls and convolutions on CUDA without TF32 for the block, restored after: what
    inference in "float32" means (`inference_precision`)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


# Inference's precision (eval, features, predict, figures) where the caller leaves it to "auto":
# "bf16" or "float32" for every command of the process.
INFERENCE_PRECISION_SWITCH = "ALEXNET_INFERENCE_PRECISION"
PRECISIONS = ("auto", "bf16", "float32")


def inference_precision(precision: str | None, device: torch.device, environ: dict | None = None) -> str:
    """"bf16" or "float32" for running a trained net on `device`: `precision` when it is one of them;
    "auto" (or None) takes INFERENCE_PRECISION_SWITCH where set, else bf16 autocast on CUDA (its
    tensor cores) and float32 elsewhere, the CPU's path as it always was. "float32" on CUDA is full
    float32, TF32 off (`full_float32`)."""
    precision = precision or "auto"
    if precision == "auto":
        precision = (os.environ if environ is None else environ).get(INFERENCE_PRECISION_SWITCH, "").strip() or "auto"
    if precision not in PRECISIONS:
        raise UserError(f"inference precision must be one of {', '.join(PRECISIONS)}, got '{precision}' "
                        f"(from {INFERENCE_PRECISION_SWITCH}?)")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "float32"
    return precision
