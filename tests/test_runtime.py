"""alexnet.runtime: when bf16 autocast is the default (the evidence that it trains as well as float32 is
studies/bf16_error.py's, in docs/experiments/bf16.md)."""

from __future__ import annotations

import pytest
import torch

from alexnet.runtime import cpu_flags, cpu_has_fast_bf16, use_bf16_autocast

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
# Flags of the two kinds of Xeon: this project's (AVX512-BF16, no AMX) and a Sapphire Rapids one.
NO_AMX = {"fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
AMX = NO_AMX | {"amx_bf16", "amx_tile", "amx_int8"}


def test_auto_is_bf16_only_where_bf16_matmuls_are_fast():
    assert use_bf16_autocast("auto", CPU, AMX)
    assert not use_bf16_autocast("auto", CPU, NO_AMX)  # AVX512-BF16 alone: bf16 is slower here
    assert not use_bf16_autocast("auto", CPU, set())
    assert use_bf16_autocast("auto", CUDA, set())
    assert not use_bf16_autocast("auto", torch.device("mps"), AMX)


@pytest.mark.parametrize("flags", [AMX, NO_AMX])
def test_an_explicit_choice_wins_over_the_cpu(flags):
    assert use_bf16_autocast("bf16", CPU, flags) and not use_bf16_autocast("off", CPU, flags)
    assert use_bf16_autocast("bf16", CUDA, flags) and not use_bf16_autocast("off", CUDA, flags)


def test_cpu_flags_reads_the_first_cpus_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512_bf16 amx_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert cpu_has_fast_bf16(cpu_flags(info))
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(tmp_path / "arm") == {"fp", "asimd", "bf16"} and not cpu_has_fast_bf16(cpu_flags(tmp_path / "arm"))
    assert cpu_flags(tmp_path / "missing") == frozenset()
    # and this machine's flags are read for "auto" when none are given
    assert use_bf16_autocast("auto", CPU, environ={}) == cpu_has_fast_bf16(cpu_flags())


def test_the_switch_makes_auto_resolve_on_this_machine_as_on_the_other_kind_of_cpu():
    assert use_bf16_autocast("auto", CPU, environ={"ALEXNET_CPU_FAST_BF16": "1"})
    assert not use_bf16_autocast("auto", CPU, environ={"ALEXNET_CPU_FAST_BF16": "0"})
    assert use_bf16_autocast("auto", CPU, environ={"ALEXNET_CPU_FAST_BF16": ""}) == cpu_has_fast_bf16(cpu_flags())
    # flags given describe a CPU, whatever this one pretends to be; an explicit choice and CUDA are not
    # the switch's business
    assert use_bf16_autocast("auto", CPU, AMX, environ={"ALEXNET_CPU_FAST_BF16": "0"})
    assert not use_bf16_autocast("auto", CPU, NO_AMX, environ={"ALEXNET_CPU_FAST_BF16": "1"})
    assert not use_bf16_autocast("off", CPU, environ={"ALEXNET_CPU_FAST_BF16": "1"})
    assert use_bf16_autocast("auto", CUDA, environ={"ALEXNET_CPU_FAST_BF16": "0"})


def test_the_compile_cache_is_private_and_a_planted_one_refused(tmp_path):
    """Inductor's default cache, /tmp/torchinductor_USER, sits in a folder every user can write: the
    commands use a folder of the user's own instead, and refuse one others could have filled."""
    import os
    import stat

    from alexnet.errors import UserError
    from alexnet.runtime import private_compile_cache

    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    folder = private_compile_cache(env)
    assert folder == tmp_path / "cache" / "alexnet" / "torchinductor" and env["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.geteuid()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UserError, match="not a folder of this user's own"):
        private_compile_cache({"TORCHINDUCTOR_CACHE_DIR": str(shared)})
    if os.geteuid() == 0:  # another user's folder, closed to others but not ours
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 2002, 2002)
        with pytest.raises(UserError, match="owner uid 2002"):
            private_compile_cache({"TORCHINDUCTOR_CACHE_DIR": str(theirs)})
    (tmp_path / "link").symlink_to(shared)
    with pytest.raises(UserError, match="not a folder of this user's own"):
        private_compile_cache({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "link")})
