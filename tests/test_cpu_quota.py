"""The CPU quota a container grants, read from cgroup files (fake ones here, in both layouts)."""
from __future__ import annotations

from pathlib import Path

import torch

from inference.hardware import cpu_quota
from inference.hardware.cpu_quota import quota_cpus


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_in_cpus(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/space/app\n")
    write(tmp_path / "fs/space/app/cpu.max", "200000 100000\n")
    assert quota_cpus(tmp_path / "proc", tmp_path / "fs") == 2.0


def test_the_smallest_quota_on_the_way_up_counts(tmp_path: Path) -> None:
    write(tmp_path / "proc", "0::/space/app\n")
    write(tmp_path / "fs/space/app/cpu.max", "max 100000\n")
    write(tmp_path / "fs/space/cpu.max", "150000 100000\n")
    assert quota_cpus(tmp_path / "proc", tmp_path / "fs") == 1.5


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    write(tmp_path / "proc", "4:memory:/x\n1:cpu,cpuacct:/space\n0::/\n")
    write(tmp_path / "fs/cpu,cpuacct/space/cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "fs/cpu,cpuacct/space/cpu.cfs_period_us", "100000\n")
    assert quota_cpus(tmp_path / "proc", tmp_path / "fs") == 1.0
    write(tmp_path / "fs/cpu,cpuacct/space/cpu.cfs_quota_us", "-1\n")
    assert quota_cpus(tmp_path / "proc", tmp_path / "fs") is None
    assert quota_cpus(tmp_path / "missing", tmp_path / "fs") is None


def test_threads_come_down_to_the_quota_and_never_go_up(monkeypatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(cpu_quota, "quota_cpus", lambda: 1.5)
        torch.set_num_threads(4)
        assert "(of 4 visible): running on 1 thread" in cpu_quota.fit_threads_to_quota() and torch.get_num_threads() == 1
        monkeypatch.setattr(cpu_quota, "quota_cpus", lambda: 64.0)
        assert cpu_quota.fit_threads_to_quota() == "" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _cgroup_tree(tmp_path: Path, files: dict[str, str], line: str) -> tuple[Path, Path]:
    root = tmp_path / "sys"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "cgroup"
    proc.write_text(line + "\n")
    return proc, root


def test_the_kv_budget_is_half_of_what_the_cgroup_leaves_not_the_hosts_free_memory(tmp_path: Path) -> None:
    from inference.serving.batching import kv_budget_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 67108864 kB\nMemAvailable: 62914560 kB\n")      # a 64 GiB host, 60 free
    v2 = _cgroup_tree(tmp_path / "v2", {"space/memory.max": str(16 << 30), "space/memory.current": str(6 << 30)},
                      "0::/space")
    assert kv_budget_bytes(torch.device("cpu"), meminfo, *v2) == (10 << 30) // 2
    v1 = _cgroup_tree(tmp_path / "v1", {"memory/space/memory.limit_in_bytes": str(8 << 30),
                                        "memory/space/memory.usage_in_bytes": str(2 << 30)}, "4:memory:/space")
    assert kv_budget_bytes(torch.device("cpu"), meminfo, *v1) == (6 << 30) // 2
    unlimited = _cgroup_tree(tmp_path / "none", {"space/memory.max": "max", "space/memory.current": "1"}, "0::/space")
    assert kv_budget_bytes(torch.device("cpu"), meminfo, *unlimited) == 62914560 * 1024 // 2
