"""qwq: run QwQ-32B-Preview and every Qwen2-architecture checkpoint."""

from qwq.compat import AutoModelForCausalLM, AutoTokenizer
from qwq.llm import LLM
from qwq.outputs import CompletionOutput, RequestOutput
from qwq.sampling_params import SamplingParams
from qwq.streamers import TextIteratorStreamer, TextStreamer

__all__ = [
           "LLM",
           "AutoModelForCausalLM",
           "AutoTokenizer",
           "CompletionOutput",
           "RequestOutput",
           "SamplingParams",
           "TextIteratorStreamer",
           "TextStreamer",
]
__version__ = "0.1.0"
