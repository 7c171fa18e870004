"""Tensor parallelism over torch.distributed (gloo on CPU, NCCL on CUDA).

    llm = qwq.LLM("qwq-demo", tensor_parallel_size=2)

group.py: the process groups (started ranks or torchrun's) and stopping them; ranks.py: the
rank processes rank 0 starts (`python -m qwq.distributed.worker`, so any script, `python -`
or a notebook can start them), their stderr, the watchdogs; shard.py: one rank's shard of the
network and its collectives; steps.py: rank 0's step broadcasts; launch.py: building the
engine on rank 0 and the followers on the others; worker.py: a started rank's entry point.
"""

from qwq.distributed.group import TensorParallelError
from qwq.distributed.launch import load_tp_engine, shutdown
from qwq.distributed.shard import check_tp_size

__all__ = ["TensorParallelError", "check_tp_size", "load_tp_engine", "shutdown"]
