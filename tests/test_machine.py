import os
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet import machine
from alexnet.machine import (CpuSample, busy_elsewhere, cgroup_cpu_limit, configure_process, plan_threads,
                             fixed_thread_count, read_cpu_sample, threads_for, usable_cores)

SRC = Path(__file__).resolve().parents[1] / "src"


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "nothing-here") is None


def test_usable_cores_is_affinity_capped_by_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(tmp_path) == 2  # 1.5 cores of quota: two threads can use it
    (tmp_path / "cpu.max").write_text("800000 100000\n")
    assert usable_cores(tmp_path) == 4  # the quota allows more than the affinity does
    (tmp_path / "cpu.max").write_text("20000 100000\n")
    assert usable_cores(tmp_path) == 1


def test_read_cpu_sample_counts_busy_ticks(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    (tmp_path / "stat").write_text("cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 1 2 3\ncpu1 4 5 6\nintr 7\n")
    ticks = os.sysconf("SC_CLK_TCK")
    s = read_cpu_sample(tmp_path / "stat", niced=True)
    assert s.machine_busy == pytest.approx((100 + 5 + 50 + 3 + 2) / ticks)
    s = read_cpu_sample(tmp_path / "stat", niced=False)  # niced processes' 5 ticks yield to us
    assert s.machine_busy == pytest.approx((100 + 50 + 3 + 2) / ticks)
    assert s.cpus == 2  # the per-CPU lines
    assert read_cpu_sample(tmp_path / "missing") is None


def test_busy_elsewhere_subtracts_our_own_time():
    before = CpuSample(wall=10.0, machine_busy=100.0, own=5.0)
    after = CpuSample(wall=12.0, machine_busy=104.0, own=6.0)  # 4 core-s busy, 1 of them ours, in 2 s
    assert busy_elsewhere(before, after) == pytest.approx(1.5)
    assert busy_elsewhere(after, after) == 0.0


def test_busy_elsewhere_is_at_most_the_machines_cpus(monkeypatch):
    # 2 cores fully busy over 0.1 s of ticks, but the probe waited 30 ms for a core before reading the
    # clock: 0.2 core-s over 0.07 s reads as 2.86 cores elsewhere, more than the machine has
    before, after = CpuSample(10.03, 100.0, 5.0, cpus=2), CpuSample(10.10, 100.2, 5.0, cpus=2)
    assert busy_elsewhere(before, after) == 2.0
    assert busy_elsewhere(CpuSample(10.03, 100.0, 5.0), CpuSample(10.10, 100.2, 5.0)) == pytest.approx(0.2 / 0.07)
    monkeypatch.setattr(machine.time, "sleep", lambda s: None)
    samples = iter([before, after])
    monkeypatch.setattr(machine, "read_cpu_sample", lambda path="/proc/stat": next(samples))
    assert plan_threads(usable=2) == 2  # a saturated 2-core machine: both threads win a larger share


@pytest.mark.parametrize("usable, others, cpus, expected", [
    (2, 0.0, 2, 2), (2, 0.6, 2, 2),  # idle, or a light background: every core
    (2, 1.0, 2, 1), (2, 1.7, 2, 1),  # one busy process: the core it leaves (bench/threads.py, busy)
    (2, 1.8, 2, 2), (2, 2.0, 2, 2),  # the whole machine busy: threads share it per runnable thread
    (8, 9.0, 16, 7), (8, 12.0, 16, 4), (2, 15.0, 16, 1), (2, 16.0, 16, 2),  # 8 or 2 of 16 CPUs
    (1, 1.0, 2, 1), (4, 1.0, 0, 3)])  # one usable core; the machine's size unknown: taken as usable
def test_threads_for(usable, others, cpus, expected):
    assert threads_for(usable, others, cpus) == expected


def test_fixed_thread_count_precedence():
    assert fixed_thread_count({"ALEXNET_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3
    assert fixed_thread_count({"OMP_NUM_THREADS": "2"}) == 2
    assert fixed_thread_count({"OMP_NUM_THREADS": "4,2"}) == 4  # OpenMP's nested list: the outer level
    assert fixed_thread_count({"OMP_NUM_THREADS": ""}) is None
    assert fixed_thread_count({"OMP_NUM_THREADS": "zero"}) is None
    assert fixed_thread_count({}) is None


def test_plan_threads_from_a_probe_of_the_load(monkeypatch):
    monkeypatch.setattr(machine.time, "sleep", lambda s: None)

    def probe(*samples):
        it = iter(samples)
        monkeypatch.setattr(machine, "read_cpu_sample", lambda path="/proc/stat": next(it))
        return plan_threads(usable=2)

    idle, two = CpuSample(0.0, 0.0, 0.0, cpus=2), CpuSample(0.1, 0.0, 0.0, cpus=2)
    assert probe(idle, two) == 2
    assert probe(idle, CpuSample(0.1, 0.1, 0.0, cpus=2)) == 1  # one other core busy: the one left
    assert probe(idle, CpuSample(0.1, 0.15, 0.05, cpus=2)) == 1  # our own time does not count
    assert probe(idle, CpuSample(0.1, 0.2, 0.0, cpus=2)) == 2  # both busy elsewhere: share per thread
    assert probe(None) == 2  # no /proc/stat: every usable core
    assert plan_threads(fixed=3, usable=2) == 3


def test_configure_process_keeps_user_settings():
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}
    assert configure_process(environ=env) == 1
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["OMP_NUM_THREADS"] == "1"
    env = {}
    assert configure_process(threads=2, environ=env) == 2
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"


def test_torch_starts_with_the_planned_threads():
    """The settings reach torch only if made before it is imported: check in a fresh process."""
    code = ("import os\nfrom alexnet.machine import configure_process\nconfigure_process(threads=1)\n"
            "import torch\nprint(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(PYTHONPATH=str(SRC), MKL_NUM_THREADS="2")  # inherited from a parent that planned 2
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "PASSIVE"]


def test_cli_rejects_zero_threads(capsys):
    from alexnet.cli.commands import main

    with pytest.raises(SystemExit) as e:
        main(["--threads", "0", "summary", "--variant", "tiny"])
    assert e.value.code == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_the_probe_waits_only_for_what_the_commands_start_has_not_covered(monkeypatch):
    slept, now = [], [100.0]
    monkeypatch.setattr(machine.time, "sleep", slept.append)
    monkeypatch.setattr(machine.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(machine, "read_cpu_sample", lambda path="/proc/stat": CpuSample(now[0], 0.0, 0.0, cpus=2))
    assert plan_threads(usable=2, probe_s=0.08) == 2 and slept == [pytest.approx(0.08)]  # no start sample
    slept.clear()
    started = CpuSample(now[0] - 0.05, 0.0, 0.0, cpus=2)  # the imports took 50 ms
    assert plan_threads(usable=2, probe_s=0.08, started=started) == 2 and slept == [pytest.approx(0.03)]
    slept.clear()
    started = CpuSample(now[0] - 0.2, 0.0, 0.0, cpus=2)
    assert plan_threads(usable=2, probe_s=0.08, started=started) == 2 and slept == []


def test_the_command_takes_its_first_sample_before_the_clis_imports():
    code = ("import sys\nsys.argv = ['alexnet', 'summary']\nimport alexnet.__main__ as m\n"
            "assert 'alexnet.cli.commands' not in sys.modules\n"
            "import alexnet.machine as machine\n"
            "def configure(threads=None, environ=None, started=None):\n"
            "    print(type(started).__name__, 'alexnet.cli.commands' in sys.modules)\n    raise SystemExit(0)\n"
            "machine.configure_process = configure\nm.run()")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["CpuSample", "True"]  # taken before the CLI was imported, handed to the probe
