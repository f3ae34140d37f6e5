"""How many CPUs, and how much memory, this process may really use: a container's quotas, not the
host's CPUs and memory that it can see.

A Hugging Face Space (and many containers) shows the host's CPUs but grants a quota of two of
them. Thread teams sized by the visible count then oversubscribe the quota, and the fused decode
layer, whose threads meet at barriers, pays for every thread that waits for its time slice. So a
CPU run uses as many threads as the quota allows (cgroup v2 `cpu.max`, or v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`, on the process's cgroup and its parents). Likewise the
memory a class's KV caches may take is bounded by the cgroup's memory limit where there is one
(v2 `memory.max` less `memory.current`, v1 `memory.limit_in_bytes` less `memory.usage_in_bytes`),
not by the host's free memory that /proc/meminfo shows.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch


def quota_cpus(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The smallest CPU quota on this process's cgroup or its parents, in CPUs; None without one."""
    quotas = [(_v2_quota if v2 else _v1_quota)(folder) for folder, v2 in _cgroup_folders(proc_cgroup, root, "cpu")]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _cgroup_folders(proc_cgroup: Path, root: Path, controller: str) -> list[tuple[Path, bool]]:
    """(folder, whether it is cgroup v2) of this process's cgroup and its parents, in `controller`'s
    hierarchy (v1) or the unified one (v2); none where /proc cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":                                    # cgroup v2
            found += [(folder, True) for folder in _folders(root, path)]
        elif controller in controllers.split(","):               # cgroup v1, that controller's hierarchy
            mount = root / controllers if (root / controllers).is_dir() else root / controller
            found += [(folder, False) for folder in _folders(mount, path)]
    return found


def memory_room(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's cgroup (or a parent's) may still take under its memory limit, the
    tightest one; None without a limit."""
    rooms = [_room(folder, "memory.max", "memory.current") if v2 else
             _room(folder, "memory.limit_in_bytes", "memory.usage_in_bytes")
             for folder, v2 in _cgroup_folders(proc_cgroup, root, "memory")]
    found = [r for r in rooms if r is not None]
    return min(found) if found else None


def _room(folder: Path, limit_file: str, usage_file: str) -> int | None:
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= 1 << 60:              # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - int((folder / usage_file).read_text()))
    except (OSError, ValueError):
        return None


def _folders(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and its parents' under `mount`."""
    parts = [p for p in path.strip("/").split("/") if p]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def fit_threads_to_quota() -> str:
    """Lower PyTorch's (and the kernel's) thread count to the CPU quota where that is smaller; say
    what was done, in a line for the log ("" when nothing changed)."""
    quota = quota_cpus()
    threads = torch.get_num_threads()
    if quota is None or math.floor(quota) >= threads:
        return ""
    fitted = max(1, math.floor(quota))
    torch.set_num_threads(fitted)
    return f"CPU quota {quota:g} CPUs (of {threads} visible): running on {fitted} thread{'s' if fitted > 1 else ''}"
