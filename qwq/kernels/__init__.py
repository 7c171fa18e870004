"""CPU kernels torch does not ship, compiled once per machine on first use.

For x86 CPUs (torch.ops.qwq.*):
  blocks.cpp: linear layers on GGUF-style weight blocks (q5_0, q8_0; formats in blocks.py)
    against int8 activation blocks
  layers.cpp: the decode step's per-token layers fused (paged decode attention, RMSNorm with
    and without the residual add, silu * up)
  ggml.cpp: linear layers on GGUF tensors in the file's own block formats (Q4_0 ... Q6_K; see
    ggml.py), read in place
  ggml_rows.cpp: rows of a GGUF tensor (the token table) dequantized
  decoder.cpp: every decoder layer of a decode step on those, in one call
The kernels are written in AVX-512 intrinsics and built for the best instruction set the CPU
runs: "avx512" (F, BW, VL, DQ, VNNI: the instructions themselves) or "avx2" (with FMA and
F16C: isa.h writes each 512-bit type as two AVX2 registers and each intrinsic on the halves,
with the same results). QWQ_CPU_KERNELS=avx512|avx2|none picks one instead, as torch's
ATEN_CPU_CAPABILITY does (the CPU still has to run it). Each build goes to torch's extension
cache (~/.cache/torch_extensions) under its own name; a machine without the instructions or a
compiler simply does not get the kernels, and callers take their torch path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCES = [str(Path(__file__).with_name(f)) for f in ("blocks.cpp", "layers.cpp", "ggml.cpp",
                                                            "ggml_rows.cpp", "decoder.cpp")]
# each instruction set: its compiler flags and the /proc/cpuinfo flags a CPU needs to run it,
# best first
ISAS = {
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma",
                "-mf16c"],
               {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma", "f16c"}),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], {"avx2", "fma", "f16c"}),
}


def _headers_flag() -> str:
    """A define holding the headers' digest: torch's loader rebuilds when the sources or flags
    change, and would otherwise keep a stale build after a change to a header alone."""
    digest = hashlib.sha256()
    for header in sorted(Path(__file__).parent.glob("*.h")):
        digest.update(header.read_bytes())
    return f"-DQWQ_KERNEL_HEADERS={digest.hexdigest()[:16]}"


def cpu_flags() -> set[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where it is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def kernel_isa() -> str | None:
    """The instruction set this process builds the kernels for: QWQ_CPU_KERNELS if set (and
    the CPU runs it), else the best one the CPU runs; None for none."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    flags = cpu_flags()
    runs = [isa for isa, (_, needs) in ISAS.items() if needs <= flags]
    asked = os.environ.get("QWQ_CPU_KERNELS", "").strip().lower()
    if not asked:
        return runs[0] if runs else None
    if asked == "none":
        return None
    if asked not in ISAS:
        raise ValueError(f"QWQ_CPU_KERNELS={asked!r}: expected one of {', '.join(ISAS)} or none")
    if asked not in runs:
        log.warning("qwq: QWQ_CPU_KERNELS=%s, but this CPU lacks %s; using torch kernels", asked,
                    ", ".join(sorted(ISAS[asked][1] - flags)))
        return None
    return asked


# A build takes a minute or two, and torch never touches its lock meanwhile: a build directory's
# lock older than this was left by a build that was killed (a process stopped during its first
# load), and torch would wait on it forever: every later load of qwq would hang.
STALE_LOCK_S = 30 * 60


def _clear_stale_lock(build_dir: Path) -> None:
    lock = build_dir / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return
    if age > STALE_LOCK_S:
        log.warning("qwq: removing %s, left %.0f min ago by a kernel build that did not finish",
                    lock, age / 60)
        lock.unlink(missing_ok=True)


@functools.cache
def kernels_available() -> bool:
    """True once torch.ops.qwq's kernels are built and loaded for this CPU."""
    isa = kernel_isa()
    if isa is None:
        return False
    if shutil.which("c++") is None and shutil.which("g++") is None:
        log.warning("qwq: no C++ compiler; using torch kernels")
        return False
    try:
        from torch.utils import cpp_extension

        # one name per instruction set: the two builds keep their own cache directories
        name = "qwq_kernels" if isa == "avx512" else f"qwq_kernels_{isa}"
        try:  # (a private torch function: without it, no lock is cleared)
            build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
        except (AttributeError, TypeError):
            build_dir = None
        if build_dir is not None:
            _clear_stale_lock(build_dir)
        cpp_extension.load(name=name,
                           sources=_SOURCES,
                           extra_cflags=["-O3", "-fopenmp", *ISAS[isa][0], _headers_flag()],
                           extra_ldflags=["-fopenmp"],
                           is_python_module=False, verbose=False)
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:
        # a failed build leaves the torch paths; it must not stop a load
        log.warning("qwq: building qwq's %s kernels failed (%s); using torch kernels", isa, e)
        return False
    return all(hasattr(torch.ops.qwq, op) for op in (
        "q8_0_linear", "silu_mul", "greedy_tokens", "ggml_linear_parts", "ggml_shuffle_chunks",
        "ggml_rows")) and _has_class("DecodeLayers")


def _has_class(name: str) -> bool:
    """Whether the build registered torch.classes.qwq.<name> (a missing one raises
    RuntimeError, not AttributeError)."""
    try:
        getattr(torch.classes.qwq, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def fused_layers_take(x: torch.Tensor) -> bool:
    """Whether layers.cpp's kernels take this activation (CPU, last dim a multiple of 16)."""
    return x.device.type == "cpu" and x.shape[-1] % 16 == 0 and kernels_available()

