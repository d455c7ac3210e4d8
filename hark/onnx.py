"""ONNX Runtime sessions: CUDA where it really works, CPU otherwise, decided once per process.

onnxruntime-gpu lists the CUDA provider even on machines without CUDA libraries; a session asked for it
then logs an error and falls back. So the first session of a process asks quietly, the outcome is
cached and logged once, and later sessions never ask for a provider that failed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_resolved: dict[str, list[str]] = {}


def _options(quiet: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # 4 = fatal only: the probing session must not print the missing-CUDA error.
    opts.log_severity_level = 4 if quiet else 3
    threads = _ort_threads() or usable_cpus(default=0)
    if threads > 0:
        opts.intra_op_num_threads = threads
    # Idle worker threads spin by default, burning the cores the other stages (and other processes) need:
    # measured on 2 cores, query p50 361-443 ms with spinning against 122-188 ms without.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def usable_cpus(default: int | None = None, cgroup: Path = Path("/sys/fs/cgroup"),
                membership: Path = Path("/proc/self/cgroup")) -> int:
    """The cores this process may run on: its CPU affinity, bounded by a cgroup CPU quota (a container's `--cpus`,
    a pod's CPU limit, a systemd unit's `CPUQuota=`). `default` (when given) is returned instead where nothing
    restricts the process.

    ONNX Runtime sizes its default pool from the machine's cores and ignores both: pinned to 2 of 16 cores, a
    session ran 15 worker threads on those 2.
    """
    total = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = total
    quota = _cgroup_quota(cgroup, membership)
    if quota is not None:
        allowed = min(allowed, max(1, math.ceil(quota)))
    if default is not None and allowed >= total:
        return default
    return max(1, allowed)


def _cgroup_quota(root: Path, membership: Path) -> float | None:
    """CPUs granted by the tightest quota on the process's cgroup and its ancestors (v2 `cpu.max`, else v1
    `cpu.cfs_quota_us`); None without one.

    A container with its own cgroup namespace sees its cgroup as the root; a process in a nested cgroup without
    one (a systemd unit, a job inside a pod) finds its own in /proc/self/cgroup, and every level above it may cap it.
    """
    v2, v1 = _cgroup_paths(membership)
    found = [q for q in (_v2_quota(d) for d in _levels(root, v2)) if q is not None]
    if not found:
        base = next((root / name for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / name).is_dir()), None)
        if base is not None:
            found = [q for q in (_v1_quota(d) for d in _levels(base, v1)) if q is not None]
    return min(found) if found else None


def _cgroup_paths(membership: Path) -> tuple[str, str]:
    """The process's cgroup v2 path and v1 cpu-controller path ("/" where unknown)."""
    v2 = v1 = "/"
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _levels(root: Path, path: str) -> list[Path]:
    """`root`/`path` and each ancestor up to `root`, where they exist. A path the mount does not hold (a container
    that shows the host's path but mounts only its own cgroup) leaves `root` alone."""
    parts = [p for p in path.split("/") if p and p not in {".", ".."}]
    levels = [root.joinpath(*parts[:n]) for n in range(len(parts), 0, -1)]
    return [d for d in levels if d.is_dir()] + [root]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().partition(" ")
        return None if quota.strip() == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota_us = int((folder / "cpu.cfs_quota_us").read_text())
        period_us = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


@functools.cache
def _ort_threads() -> int:
    """HARK_ORT_THREADS from the settings (environment or hark.toml), read once per process."""
    from hark.settings import Settings

    return Settings.load().ort_threads


def create_session(path: str | Path, device: str = "auto"):
    """An InferenceSession on `device` ("auto", "cpu" or "cuda")."""
    import onnxruntime as ort

    if device not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return ort.InferenceSession(str(path), _options(), providers=[CPU])
    if device in _resolved:
        return ort.InferenceSession(str(path), _options(), providers=_resolved[device])
    wanted = [CUDA, CPU] if CUDA in ort.get_available_providers() and _driver_present() else [CPU]
    # The provider bridge reports a failed CUDA load through the default logger, not the session's.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(str(path), _options(quiet=True), providers=wanted)
    finally:
        ort.set_default_logger_severity(3)
    got = session.get_providers()
    if device == "cuda" and CUDA not in got:
        raise RuntimeError("device 'cuda' was asked for, but ONNX Runtime cannot use CUDA here "
                           "(no GPU, or the CUDA/cuDNN libraries are missing)")
    _resolved[device] = [p for p in wanted if p in got] or [CPU]
    log.info("ONNX Runtime providers: %s", ", ".join(_resolved[device]))
    return session


def _driver_present() -> bool:
    """Whether the NVIDIA driver library can be loaded at all (no GPU: no point asking ORT for CUDA)."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True
