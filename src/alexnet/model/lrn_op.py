"""§3.3's LRN on the CPU as a torch operator: `torch.ops.alexnet.lrn` and its gradient
`torch.ops.alexnet.lrn_backward` (csrc/lrn.cpp, C++ over pixels with at::parallel_for), the one
piece of native code the project keeps, because it pays: bench/docs/native.md.

Built the standard way, `torch.utils.cpp_extension.load`, on first use on the CPU (never at import),
with ninja and the machine's C++ compiler (9.5 s cold on a 2-core Zen 4, then 0.05 s to load; the
build folder is keyed by torch's version and a hash of the source and flags). Its autograd formula
and fake (meta) implementation are registered with torch.library, so autograd, torch.compile and
torch.export see one operator. The build folder is private: torch's default sits in /tmp, where
another user could plant a library for this process to load; here it is $TORCH_EXTENSIONS_DIR, else
$XDG_CACHE_HOME/alexnet/torch_extensions (~/.cache/...), refused unless it is this user's own and
closed to group and others (`alexnet.runtime.private_folder`).

ALEXNET_LRN_OP picks the path: "0" the torch operations (alexnet.model.lrn), "1" this operator or an
error, unset (or anything else) this operator where it builds, else the torch operations after one
warning line.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import threading
from pathlib import Path

import torch
from torch import Tensor

from alexnet.errors import UserError
from alexnet.runtime import private_folder

SWITCH = "ALEXNET_LRN_OP"
SOURCE = Path(__file__).with_name("csrc") / "lrn.cpp"
# -fopenmp: at::parallel_for is an OpenMP loop in the header (torch's CPU builds); without it the
# operator runs on one thread. Only compiled so: the library links no OpenMP runtime of its own, its
# GOMP_ calls resolve to the one torch loaded (libtorch_cpu's). -ffp-contract=off: no fused
# multiply-adds, so each of the AVX-512, AVX2 and baseline copies (target_clones) rounds alike;
# -fno-math-errno lets sqrt vectorise; -fno-tree-loop-distribute-patterns keeps a map's short copy
# loops inline instead of a call to memmove per pixel.
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-fno-tree-loop-distribute-patterns"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_state = {"status": "not loaded yet", "loaded": False}


def build_folder(environ: dict | None = None) -> Path:
    """Where the operator is built: <base>/<torch version>-<hash of the source and flags>, base
    $TORCH_EXTENSIONS_DIR, else $XDG_CACHE_HOME/alexnet/torch_extensions (~/.cache/...); both made 0700
    and checked private (UserError otherwise)."""
    environ = os.environ if environ is None else environ
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base = Path(environ.get("TORCH_EXTENSIONS_DIR") or cache / "alexnet" / "torch_extensions")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    hint = "the LRN operator's library would be loaded from it: point TORCH_EXTENSIONS_DIR at a private folder"
    private_folder(base, "the LRN operator's build folder", hint)
    return private_folder(base / f"{torch.__version__.replace('+', '_')}-{key}", "the LRN operator's build folder",
                          hint)


def _build(folder: Path) -> None:
    """Compile (or find compiled) and load the library, then register what Python adds to it. Under
    an flock of our own: torch's own lock file in the folder, left behind by a build that was killed,
    would make every later build wait for ever; whoever holds the flock removes it."""
    from torch.utils import cpp_extension

    fd = os.open(folder / "build.flock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (folder / "lock").unlink(missing_ok=True)
        cpp_extension.load("alexnet_lrn", [str(SOURCE)], extra_cflags=CFLAGS, build_directory=str(folder),
                           is_python_module=False)
    finally:
        os.close(fd)
    _register()


def load(environ: dict | None = None) -> bool:
    """Whether the operator is there to call, built and loaded on the first call of a process;
    `status()` says why not. Raises only with ALEXNET_LRN_OP=1."""
    if _state["status"] != "not loaded yet":
        return _state["loaded"]
    with _lock:
        if _state["status"] == "not loaded yet":
            _state["loaded"], _state["status"] = _try_build(os.environ if environ is None else environ)
    return _state["loaded"]


def _try_build(environ: dict) -> tuple[bool, str]:
    switch = environ.get(SWITCH, "").strip()
    if switch == "0":
        return False, f"off ({SWITCH}=0): the torch operations"
    try:
        folder = build_folder(environ)
        if not _state.get("registered"):  # a process loads the library once (forget() keeps it)
            _build(folder)
        return True, f"loaded from {folder}"
    except (UserError, OSError, RuntimeError, ImportError, ValueError, subprocess.SubprocessError) as e:
        why = _first_error(e)
        if switch == "1":
            raise UserError(f"{SWITCH}=1 but the LRN operator did not build: {why}") from None
        log.warning("alexnet: the LRN operator did not build (%s); LRN runs as torch operations", why[:300])
        return False, f"not built ({why}): the torch operations"


def _first_error(e: BaseException) -> str:
    """The line of a build's failure that says what failed (the compiler's first error), else its last."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    return next((line for line in lines if "error:" in line), lines[-1])


def status() -> str:
    """What load() did: where the operator was loaded from, or why the torch operations run."""
    return _state["status"]


def forget() -> None:
    """As in a new process: the next load() reads the environment and builds again (tests). The
    registered operator stays registered; only whether it is used is decided again."""
    _state.update(status="not loaded yet", loaded=False)


def _register() -> None:
    """The autograd formula and the fake implementations, once a process (the operators come with
    the library)."""
    if _state.get("registered"):
        return
    torch.library.register_fake("alexnet::lrn", _fake_lrn)
    torch.library.register_fake("alexnet::lrn_backward", _fake_lrn_backward)
    torch.library.register_autograd("alexnet::lrn", _backward, setup_context=_setup_context)
    _state["registered"] = True


def _layout_of(x: Tensor) -> Tensor:
    """x as the kernel reads it: channels_last stays, anything else becomes contiguous."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _fake_lrn(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
    torch._check(x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16))
    return torch.empty_like(_layout_of(x))


def _fake_lrn_backward(grad: Tensor, x: Tensor, size: int, alpha: float, beta: float, k: float,
                       groups: int) -> Tensor:
    return torch.empty_like(_layout_of(x))


def _setup_context(ctx, inputs, output) -> None:
    x, size, alpha, beta, k, groups = inputs
    ctx.constants = (size, alpha, beta, k, groups)
    ctx.save_for_backward(x)  # the scale is computed again from x: two activation-sized tensors fewer


def _backward(ctx, grad: Tensor):
    (x,) = ctx.saved_tensors
    return torch.ops.alexnet.lrn_backward(grad, x, *ctx.constants), None, None, None, None, None


def lrn(x: Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> Tensor:
    """§3.3 through the operator: a CPU float32 or bfloat16 (B, C, H, W) x, computed in float32, out
    in x's dtype and memory format; load() must have returned True."""
    return torch.ops.alexnet.lrn(x, size, alpha, beta, k, groups)
