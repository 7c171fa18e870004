"""Run untrusted Python (model-written code and its tests) in a child process.

Limits: wall-clock timeout (the whole process group is killed), address-space, CPU-time and
file-size limits (set by the program's first lines, before the untrusted code), an empty
temporary working directory, a minimal environment, isolated mode (-I), and no
network: a fresh network namespace where `unshare --net` is allowed, and in any case a prelude
that makes socket creation fail. This is a guard against accidents and sloppy code, not a
security boundary against a determined attacker; run evaluations on a machine you can lose.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PRELUDE = '''\
import resource as _resource
_resource.setrlimit(_resource.RLIMIT_AS, ({memory}, {memory}))
_resource.setrlimit(_resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
_resource.setrlimit(_resource.RLIMIT_CPU, ({cpu}, {cpu}))
del _resource
import socket as _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the qwq eval sandbox")
_socket.socket = _no_network
_socket.create_connection = _no_network
_socket.getaddrinfo = _no_network
del _socket
'''


@dataclass
class RunResult:
    status: str  # "passed" | "failed" | "timeout"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    tool = shutil.which("unshare")
    if tool is None:
        return ()
    try:
        ok = subprocess.run([tool, "--net", "--", "true"], capture_output=True, timeout=5,
                            check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return (tool, "--net", "--") if ok.returncode == 0 else ()


def run_python(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> RunResult:
    """Run the program; passed when it exits 0 within the timeout."""
    with tempfile.TemporaryDirectory(prefix="qwq-eval-") as tmp:
        path = Path(tmp) / "program.py"
        prelude = PRELUDE.format(memory=memory_mb << 20, cpu=int(timeout) + 1)
        path.write_text(prelude + program)
        cmd = [*_unshare_prefix(), sys.executable, "-I", str(path)]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return RunResult("timeout", f"ran past {timeout:g} s")
        if proc.returncode == 0:
            return RunResult("passed")
        return RunResult("failed", err.decode(errors="replace")[-2000:])


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
