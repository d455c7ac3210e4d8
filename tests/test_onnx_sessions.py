"""Execution-provider choice: CPU fallback without CUDA, decided once and without error spam."""

from __future__ import annotations

import os

import pytest

from hark import onnx as hark_onnx


def test_auto_falls_back_to_cpu_quietly(bundle_dir, capfd, caplog):
    hark_onnx._resolved.clear()
    caplog.set_level("INFO", logger="hark.onnx")
    first = hark_onnx.create_session(bundle_dir / "clip.onnx", "auto")
    second = hark_onnx.create_session(bundle_dir / "text.onnx", "auto")
    if not hark_onnx._driver_present():
        assert first.get_providers() == second.get_providers() == ["CPUExecutionProvider"]
    captured = capfd.readouterr()
    assert "CUDAExecutionProvider" not in captured.err + captured.out
    # The choice is logged once per process, not per session.
    assert sum("providers" in r.message for r in caplog.records) == 1


def test_explicit_devices(bundle_dir):
    assert hark_onnx.create_session(bundle_dir / "clip.onnx", "cpu").get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="device must be"):
        hark_onnx.create_session(bundle_dir / "clip.onnx", "tpu")
    if not hark_onnx._driver_present():
        hark_onnx._resolved.pop("cuda", None)
        with pytest.raises(RuntimeError, match="cannot use CUDA"):
            hark_onnx.create_session(bundle_dir / "clip.onnx", "cuda")


def test_usable_cpus_follows_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    total = os.cpu_count() or 1
    alone = tmp_path / "no-membership"  # absent: the process's cgroup is the mount's root
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(total)), raising=False)
    # Nothing restricts: ONNX Runtime's own choice.
    assert hark_onnx.usable_cpus(default=0, cgroup=tmp_path, membership=alone) == 0
    assert hark_onnx.usable_cpus(cgroup=tmp_path, membership=alone) == total
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert hark_onnx.usable_cpus(default=0, cgroup=tmp_path, membership=alone) == 0
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: one thread
    assert hark_onnx.usable_cpus(default=0, cgroup=tmp_path, membership=alone) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert hark_onnx.usable_cpus(default=0, cgroup=tmp_path, membership=alone) == 0
    if total > 1:
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
        assert hark_onnx.usable_cpus(default=0, cgroup=tmp_path, membership=alone) == 1
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
        assert hark_onnx.usable_cpus(default=0, cgroup=tmp_path, membership=alone) == 1


def test_usable_cpus_reads_the_quota_of_a_nested_cgroup(tmp_path, monkeypatch):
    """A process in a cgroup below the mount's root (a systemd unit's `CPUQuota=`, no cgroup namespace) is capped
    by its own cgroup and by every ancestor; /proc/self/cgroup says where it sits."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    membership = tmp_path / "membership"
    root = tmp_path / "v2"
    unit = root / "system.slice" / "hark.service"
    unit.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (unit / "cpu.max").write_text("200000 100000\n")
    membership.write_text("0::/system.slice/hark.service\n")
    assert hark_onnx.usable_cpus(cgroup=root, membership=membership) == 2
    (root / "system.slice" / "cpu.max").write_text("150000 100000\n")  # the slice is tighter than the unit
    assert hark_onnx.usable_cpus(cgroup=root, membership=membership) == 2  # 1.5 cores round up
    (root / "system.slice" / "cpu.max").write_text("100000 100000\n")
    assert hark_onnx.usable_cpus(cgroup=root, membership=membership) == 1
    # The host's path of a container that mounts only its own cgroup: the mount's root holds the quota.
    membership.write_text("0::/docker/0123abcd\n")
    (root / "cpu.max").write_text("300000 100000\n")
    assert hark_onnx.usable_cpus(cgroup=root, membership=membership) == 3
    # cgroup v1: the cpu controller's hierarchy, mounted as cpu,cpuacct.
    v1 = tmp_path / "v1"
    job = v1 / "cpu,cpuacct" / "kubepods" / "pod1"
    job.mkdir(parents=True)
    for folder, quota in ((v1 / "cpu,cpuacct", -1), (v1 / "cpu,cpuacct" / "kubepods", 400000), (job, -1)):
        (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
    membership.write_text("4:memory:/kubepods/pod1\n3:cpu,cpuacct:/kubepods/pod1\n0::/\n")
    assert hark_onnx.usable_cpus(cgroup=v1, membership=membership) == 4
    assert hark_onnx.usable_cpus(default=0, cgroup=v1, membership=tmp_path / "absent") == 0


def test_sessions_run_no_more_threads_than_the_process_may_use(bundle_dir):
    """Pinned to one core (taskset, as a container's cpuset does), a session must not start a pool for all cores."""
    import shutil
    import subprocess
    import sys

    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        pytest.skip("needs taskset and two cores")
    code = (
        "import os, numpy as np, onnxruntime\n"  # the import itself starts a thread
        "from hark import onnx as o\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        f"s = o.create_session({str(bundle_dir / 'clip.onnx')!r}, 'cpu')\n"
        "feeds = {i.name: np.ones([d if isinstance(d, int) else 2 for d in i.shape], np.float32)"
        " for i in s.get_inputs()}\n"
        "s.run(None, feeds)\n"
        "print(len(os.listdir('/proc/self/task')) - before)\n")
    env = {k: v for k, v in os.environ.items() if k != "HARK_ORT_THREADS"}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=120)
    assert int(out.stdout.split()[-1]) == 0, out.stdout + out.stderr
