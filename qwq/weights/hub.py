"""Hub ids such as Qwen/QwQ-32B-Preview, fetched with huggingface_hub where a network exists.

Only safetensors, JSON, Jinja and tokenizer files are fetched: never pickle weights (*.bin).
Offline, or when the hub cannot be reached, the error says how to get the model here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from qwq.errors import CheckpointError

ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "vocab*", "merges.txt"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def _offline() -> bool:
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "QWQ_OFFLINE"))


def _how_to_get(repo_id: str) -> str:
    return (f"Download the model where a network exists, e.g. `hf download {repo_id} "
            f"--local-dir DIR` (or huggingface-cli download), copy DIR to this machine and "
            "pass that directory as the model; or point HF_HUB_CACHE (or HF_HOME) at a "
            "Hugging Face cache that already holds it")


def resolve_hub_id(repo_id: str, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   etag_timeout: float = 5.0) -> Path:
    """Local directory of a hub model, downloaded (or found in the cache) as needed."""
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise CheckpointError(f"{repo_id!r} is not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise CheckpointError(f"huggingface_hub is not installed, so {repo_id} cannot be "
                              f"fetched. {_how_to_get(repo_id)}") from None
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                 allow_patterns=ALLOW_PATTERNS, ignore_patterns=["*.bin"],
                                 local_files_only=_offline(), etag_timeout=etag_timeout)
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise CheckpointError(f"hub model {repo_id} was not found or is gated "
                              f"({type(e).__name__}); check the id and your HF token") from None
    except Exception as e:  # noqa: BLE001 - connection, offline, cache and HTTP errors alike
        detail = " ".join(str(e).split())[:200]  # one line, whatever the library wrote
        why = "offline mode is on" if _offline() else f"{type(e).__name__}: {detail}"
        raise CheckpointError(f"the Hugging Face Hub could not be reached to fetch {repo_id} "
                              f"and it is not in the local cache ({why}). "
                              f"{_how_to_get(repo_id)}") from None
    return Path(path)
