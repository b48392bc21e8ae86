"""Per-kernel SASS instruction counts of the CUDA kernels, from an nvcc build on this machine.

Compiles ``softpool_cuda.cu`` of a ``csrc`` folder to an sm_90 cubin with nvcc (``nvcc -cubin``:
device code only), disassembles it with ``cuobjdump -sass`` and counts, for every
``per_index_kernel<Body>`` of the chosen element and index types:

- ``total``: static instructions (the trailing ``NOP`` padding and the final self-branch left out);
- ``prologue``: instructions before the first loop (everything a thread runs once: index
  unravelling, strides, window bounds); for one-window-per-thread kernels this is the cost
  that comes before the window;
- ``div32``: runtime 32-bit integer divisions (each is an ``I2F.U32.RP``/``MUFU.RCP`` sequence of
  about 20 instructions), ``calls``: subroutine calls (64-bit divisions, slow-path ``exp``/``log``);
- ``mufu``: special-function instructions (``MUFU.EX2``, ``MUFU.LG2``, ``MUFU.RCP``);
- ``loops``: instructions per element loaded of each innermost loop (its instruction count
  divided by its global loads), costliest first: a window walk appears as nvcc's unrolled loop
  (several elements an iteration) and its remainder loop, and a body that walks its window
  twice (max, then sums) has both walks.

    python tools/bench_sass.py [--csrc softpool3d/csrc] [--dtype float] [--index int]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from softpool3d import extension

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;")
FUNCTION = re.compile(r"Function : (\S+)")
BRANCH_TARGET = re.compile(r"\b(?:BRA|BRX)\b.*?(0x[0-9a-f]+)")
LOAD = re.compile(r"^(?:LDG|LD)\b")


def find_tool(name: str) -> Path:
    """``name`` from CUDA_HOME/bin, PATH, or the copy that triton ships (cuobjdump)."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).exists():
            return Path(home) / "bin" / name
    found = shutil.which(name)
    if found:
        return Path(found)
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return bundled
    except ImportError:
        pass
    raise FileNotFoundError(f"{name} not found in CUDA_HOME/bin, /usr/local/cuda/bin, PATH or triton's bundle")


def compile_cubin(csrc: Path, out: Path, arch: str = "sm_90") -> Path:
    """``csrc/softpool_cuda.cu`` compiled by nvcc to ``out`` (a cubin for ``arch``)."""
    from torch.utils import cpp_extension

    nvcc = find_tool("nvcc")
    cuda_home = nvcc.resolve().parent.parent
    includes = [f"-I{csrc}", f"-I{cuda_home / 'include'}", f"-I{sysconfig.get_paths()['include']}"]
    includes += [f"-I{path}" for path in cpp_extension.include_paths()]
    command = [str(nvcc), "-cubin", "-std=c++20", *extension.CUDA_CFLAGS, f"-arch={arch}", *includes,
               str(csrc / "softpool_cuda.cu"), "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {csrc / 'softpool_cuda.cu'}:\n{result.stdout}{result.stderr}")
    return out


def demangle(names: list[str]) -> list[str]:
    result = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def disassemble(cubin: Path) -> dict[str, list[tuple[int, str]]]:
    """Demangled kernel name -> its ``(address, instruction)`` list."""
    text = subprocess.run([str(find_tool("cuobjdump")), "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    functions: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] | None = None
    for line in text.splitlines():
        header = FUNCTION.search(line)
        if header:
            current = functions.setdefault(header.group(1), [])
            continue
        match = INSTRUCTION.search(line)
        if match and current is not None:
            current.append((int(match.group(1), 16), match.group(2)))
    return dict(zip(demangle(list(functions)), functions.values()))


def opcode(instruction: str) -> str:
    return re.sub(r"^@!?U?P[T0-9]+\s+", "", instruction).split()[0]


@dataclass
class KernelCounts:
    total: int
    prologue: int
    div32: int
    calls: int
    mufu: int
    loops: list[float]


def count(instructions: list[tuple[int, str]]) -> KernelCounts:
    """The counts of one kernel (see the module docstring)."""
    body = [(a, i) for a, i in instructions if opcode(i) != "NOP"]
    if body and opcode(body[-1][1]) == "BRA":
        target = BRANCH_TARGET.search(body[-1][1])
        if target and int(target.group(1), 16) == body[-1][0]:
            body = body[:-1]
    branches = []  # (start address, branch address) of every backward branch: the loops
    for address, instruction in body:
        target = BRANCH_TARGET.search(instruction)
        if target and int(target.group(1), 16) <= address:
            branches.append((int(target.group(1), 16), address))
    innermost = [(s, e) for s, e in set(branches)
                 if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2 in branches)]
    sizes = []  # (loads, instructions) of each innermost loop
    for start, end in innermost:
        inside = [i for a, i in body if start <= a <= end]
        sizes.append((sum(1 for i in inside if LOAD.match(opcode(i))), len(inside)))
    loops = sorted((round(n / loads, 1) for loads, n in sizes if loads > 0), reverse=True)
    first_loop = min((s for s, _ in branches), default=None)
    ops = [opcode(i) for _, i in body]
    return KernelCounts(
        total=len(body),
        prologue=len(body) if first_loop is None else sum(1 for a, _ in body if a < first_loop),
        div32=sum(1 for o in ops if o.startswith("I2F") and ".RP" in o),
        calls=sum(1 for o in ops if o.startswith("CALL")),
        mufu=sum(1 for o in ops if o.startswith("MUFU")),
        loops=loops,
    )


KERNEL = re.compile(r"per_index_kernel<softpool::(\w+)<(.*)>\s*>")


def build_and_disassemble(csrc: Path) -> dict[str, list[tuple[int, str]]]:
    """The kernels of an nvcc build of ``csrc`` (see :func:`disassemble`)."""
    with tempfile.TemporaryDirectory() as folder:
        return disassemble(compile_cubin(csrc, Path(folder) / "softpool.cubin"))


def kernel_counts(functions: dict[str, list[tuple[int, str]]], dtype: str = "float", index: str = "int"
                  ) -> dict[str, KernelCounts]:
    """Body name -> counts for the kernels of element type ``dtype`` and index type ``index``
    (C++ spellings: ``float``, ``double``, ``c10::Half``, ``c10::BFloat16``; ``int``, ``long``)."""
    out = {}
    for name, instructions in functions.items():
        match = KERNEL.search(name.replace("(anonymous namespace)::", ""))
        if match is None:
            continue
        args = [a.strip() for a in match.group(2).split(",")]
        if args[0] == dtype and args[-1] == index:
            out[match.group(1)] = count(instructions)
    return dict(sorted(out.items()))


def run(args: argparse.Namespace) -> int:
    """The benchmark of the command line :func:`softpool3d.benchmarks.cli.sass_main` parsed."""
    functions = build_and_disassemble(args.csrc or extension.CSRC)
    print("| kernel | element, index | total | prologue | div32 | calls | mufu | loops (instructions per element) |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtype:
        for index in args.index:
            for name, c in kernel_counts(functions, dtype, index).items():
                print(f"| {name} | {dtype}, {index} | {c.total} | {c.prologue} | {c.div32} | {c.calls} | {c.mufu} "
                      f"| {', '.join(map(str, c.loops))} |")
    return 0
