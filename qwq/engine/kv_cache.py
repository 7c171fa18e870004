"""Block manager: which KV-cache blocks each sequence owns, and the prefix cache.

Only integer block ids move here; the tensors live in the runner. A full block is named by a
hash chained over the previous block's hash, the request's cache salt and the block's tokens
(SHA-256), so a hit means the same tokens at the same positions under the same salt.
Blocks whose refcount drops to zero stay cached until they are needed for something else
(least recently freed first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from qwq.engine.sequence import Sequence


def block_hash(prev: bytes, salt: str | None, tokens: list[int]) -> bytes:
    h = hashlib.sha256(prev)
    h.update((salt or "").encode() + b"\x00")
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hit_tokens = 0
        self.queried_tokens = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_ids))

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Give seq enough blocks to hold num_tokens tokens (caller checked can_allocate)."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            seq.block_ids.append(self._take_free())

    def _take_free(self) -> int:
        block, _ = self.free.popitem(last=False)
        old = self.hash_of[block]
        if old is not None and self.cached.get(old) == block:
            del self.cached[old]
        self.hash_of[block] = None
        self.ref_count[block] = 1
        return block

    def match_prefix(self, seq: Sequence) -> int:
        """Reuse cached blocks for seq's leading full blocks; returns tokens covered.

        At least one token is always left to compute, since its logits are needed.
        """
        if not self.prefix_caching or seq.block_ids or seq.params.prompt_logprobs is not None:
            return 0  # prompt logprobs need every prompt position computed
        tokens, bs = seq.token_ids, self.block_size
        usable = (len(tokens) - 1) // bs
        prev = b""
        self.queried_tokens += len(seq.prompt_ids)
        for i in range(usable):
            h = block_hash(prev, seq.params.cache_salt, tokens[i * bs:(i + 1) * bs])
            block = self.cached.get(h)
            if block is None:
                break
            if self.ref_count[block] == 0:
                del self.free[block]
            self.ref_count[block] += 1
            seq.block_ids.append(block)
            seq.block_hashes.append(h)
            prev = h
        covered = len(seq.block_ids) * bs
        self.hit_tokens += min(covered, len(seq.prompt_ids))
        return covered

    def commit(self, seq: Sequence) -> None:
        """Register seq's newly computed full blocks in the prefix cache."""
        if not self.prefix_caching:
            return
        tokens, bs = seq.token_ids, self.block_size
        while len(seq.block_hashes) < seq.num_computed // bs:
            i = len(seq.block_hashes)
            prev = seq.block_hashes[-1] if seq.block_hashes else b""
            h = block_hash(prev, seq.params.cache_salt, tokens[i * bs:(i + 1) * bs])
            seq.block_hashes.append(h)
            block = seq.block_ids[i]
            if h not in self.cached:
                self.cached[h] = block
                self.hash_of[block] = h

    def release(self, seq: Sequence) -> None:
        """Drop seq's hold on its blocks; cached ones stay reusable until evicted."""
        for block in reversed(seq.block_ids):
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                self.free[block] = None
                if self.hash_of[block] is None:
                    self.free.move_to_end(block, last=False)  # uncached: reuse first
        seq.block_ids = []
        seq.block_hashes = []

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Give back seq's trailing blocks beyond num_tokens tokens (slots of rejected draft
        tokens). They were never committed to the prefix cache."""
        keep = -(-num_tokens // self.block_size)
        while len(seq.block_ids) > max(keep, len(seq.block_hashes)):
            block = seq.block_ids.pop()
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                self.free[block] = None
                self.free.move_to_end(block, last=False)

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0
