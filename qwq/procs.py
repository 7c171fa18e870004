"""Child processes: how one ended, in words (the tensor-parallel ranks, the benchmark peers),
and an HTTP server run as one (llama-server, `qwq serve` in the benchmarks)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator


def describe_exit(code: int) -> str:
    """'killed by SIGSEGV (exit -11)' for a signal, 'exited with code 1' otherwise."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (exit {code})"
        except ValueError:
            return f"killed by signal {-code} (exit {code})"
    return f"exited with code {code}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def http_server(name: str, cmd: list[str], port: int, timeout: float = 300,
                error: type[Exception] = RuntimeError) -> Iterator[str]:
    """Run an HTTP server's command line as a child process (its output to a temporary file)
    and yield its base URL once GET /health answers 200; stop it (terminate, then kill) when
    the block ends. Its death before then, or no answer within `timeout` seconds, raises
    `error` naming the server, how it ended and the tail of its output."""
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(url):
                if proc.poll() is not None:
                    log.seek(0)
                    raise error(f"{name}: {describe_exit(proc.returncode)} before it served; "
                                f"output: {log.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise error(f"{name}: not healthy after {timeout:.0f} s")
                time.sleep(0.25)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False
