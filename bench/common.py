"""Shared helpers for the benchmark scripts: machine description, the peers' loaders."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

DATA = Path(__file__).parent / "data"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores (nproc {_nproc()}), {cpu}, {platform.system()}"


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def today() -> str:
    return datetime.date.today().isoformat()


def llama_cpp(model_path: str, n_ctx: int = 2048, threads: int | None = None,
              logits_all: bool = False):
    from llama_cpp import Llama
    return Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                 n_threads_batch=threads or os.cpu_count(), logits_all=logits_all,
                 verbose=False, n_batch=512)
