from qwq.model.attention import AttentionMetadata, KVCache
from qwq.model.qwen2 import Qwen2Model

__all__ = ["AttentionMetadata", "KVCache", "Qwen2Model"]
