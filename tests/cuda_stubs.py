"""Stand-in CUDA libraries, so that PyPI's CUDA build of torch imports and runs on a CPU-only machine.

PyPI has no CPU build of torch for Linux: its wheel (about 530 MB) links against a dozen NVIDIA
library packages (several GB more). The suite's mirror of the GPU machine and the Space's
environment take the wheel alone; this script then writes, beside torch's own libraries, one small
library per missing CUDA library, defining every symbol torch imports from it (same names, same
symbol versions) as a function that returns an error code. Nothing calls them on a CPU:
`torch.cuda.is_available()` is False and every tensor stays on the CPU. It also drops those
packages from the installed torch's declared requirements, so that installing anything that
needs torch afterwards does not fetch them after all.

Usage: python tests/cuda_stubs.py VENV_SITE_PACKAGES/torch/lib
"""
from __future__ import annotations

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Symbols that the C library, the C++ runtime, OpenMP or Python itself define (never stubbed).
_SYSTEM_VERSION = re.compile(r"^(GLIBC|GLIBCXX|CXXABI|GCC|GOMP|OMP)_")
_NOT_CUDA = re.compile(r"^(_?Py|_Z|__(?!cuda))")
_CUDA_LIBRARY = re.compile(r"^lib(cu|nccl|nvshmem|nvrtc|nvToolsExt|nvJitLink)")


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True, check=True).stdout


def _symbols(lib: Path) -> list[tuple[str, str, str, str, str]]:
    """(type, binding, section, name, version) of every dynamic symbol of `lib`."""
    found = []
    for line in _readelf("--dyn-syms", str(lib)).splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].endswith(":"):
            name, _, version = fields[7].partition("@")
            found.append((fields[3], fields[4], fields[6], name, version.lstrip("@")))
    return found


def _version_owners(lib: Path) -> dict[str, str]:
    """Which library each symbol version that `lib` asks for comes from (its .gnu.version_r)."""
    owner, owners = None, {}
    for line in _readelf("-V", str(lib)).splitlines():
        if match := re.search(r"File: (\S+)", line):
            owner = match.group(1)
        if (match := re.search(r"Name: (\S+)", line)) and owner:
            owners[match.group(1)] = owner
    return owners


def missing_libraries(torch_lib: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """For each CUDA library that torch's libraries need and this machine lacks: the symbols to
    define, name -> (ELF type, version)."""
    libs = sorted(p for p in torch_lib.glob("*.so*") if p.is_file())
    defined: set[str] = set()
    wanted: dict[str, tuple[str, str]] = {}
    owners: dict[str, str] = {}
    missing: set[str] = set()
    for lib in libs:
        owners.update(_version_owners(lib))
        needed = re.findall(r"\(NEEDED\).*\[(.+)\]", _readelf("-d", str(lib)))
        missing |= {n for n in needed if _CUDA_LIBRARY.match(n) and not (torch_lib / n).exists()}
        for kind, binding, section, name, version in _symbols(lib):
            if section != "UND":
                defined.add(name)
            elif binding != "WEAK" and not _SYSTEM_VERSION.match(version):
                wanted[name] = (kind, version)
    per_library: dict[str, dict[str, tuple[str, str]]] = collections.defaultdict(dict)
    unversioned: dict[str, tuple[str, str]] = {}
    for name, (kind, version) in wanted.items():
        if name in defined:
            continue
        if version:
            per_library[owners.get(version, version)][name] = (kind, version)
        elif not _NOT_CUDA.match(name):
            unversioned[name] = (kind, "")      # which library defines it is not recorded: every stub does
    return {soname: {**unversioned, **per_library.get(soname, {})} for soname in sorted(missing)}


def write_stub(soname: str, symbols: dict[str, tuple[str, str]], folder: Path) -> None:
    """Compile `folder/soname` defining `symbols`, each under its version."""
    with tempfile.TemporaryDirectory() as work:
        source, script = Path(work) / "stub.c", Path(work) / "stub.map"
        source.write_text("".join(f"char {name}[64];\n" if kind == "OBJECT" else f"int {name}(void) {{ return 100; }}\n"
                                  for name, (kind, _) in sorted(symbols.items())))
        command = ["gcc", "-shared", "-fPIC", "-w", "-o", str(folder / soname), str(source), f"-Wl,-soname,{soname}"]
        versions = sorted({version for _, version in symbols.values() if version})
        if versions:
            by_version = collections.defaultdict(list)
            for name, (_, version) in symbols.items():
                by_version[version or versions[0]].append(f"{name};")
            script.write_text("".join(f"{v} {{ global: {' '.join(by_version[v])} }};\n" for v in versions))
            command.append(f"-Wl,--version-script={script}")
        subprocess.run(command, check=True)


def drop_cuda_requirements(torch_lib: Path) -> int:
    """Remove the NVIDIA (and Triton) packages from torch's installed METADATA; returns how many."""
    dropped = 0
    for metadata in torch_lib.parent.parent.glob("torch-*.dist-info/METADATA"):
        lines = metadata.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not re.match(r"Requires-Dist: (nvidia-|triton|cuda-)", line)]
        dropped += len(lines) - len(kept)
        metadata.write_text("".join(kept))
    return dropped


def main() -> None:
    torch_lib = Path(sys.argv[1])
    for soname, symbols in missing_libraries(torch_lib).items():
        write_stub(soname, symbols, torch_lib)
        print(f"stand-in {soname}: {len(symbols)} symbols")
    print(f"dropped {drop_cuda_requirements(torch_lib)} CUDA package requirements from torch's metadata")


if __name__ == "__main__":
    main()
