"""Tensor parallelism over torch.distributed (gloo on CPU, NCCL on CUDA).

    llm = qwq.LLM("qwq-demo", tensor_parallel_size=2)

group.py: the process groups (started ranks or torchrun's) and stopping them; ranks.py: the
rank processes rank 0 starts (`python -m qwq.distributed.worker`, so any script, `python -`
or a notebook can start them), their stderr, the watchdogs; shard.py: one rank's shard of the
network and its collectives; steps.py: rank 0's step broadcasts; launch.py: building the
engine on rank 0 and the followers on the others from qwq.compose's plan (load_tp_engine,
reached through qwq.models.load_engine); worker.py: a started rank's entry point.

This package's __init__ imports only the mechanics (not launch.py, which imports qwq.compose,
which imports shard.py): importing any of its modules never runs the composition.
"""

from qwq.distributed.group import TensorParallelError, shutdown
from qwq.distributed.shard import check_tp_size

__all__ = ["TensorParallelError", "check_tp_size", "shutdown"]
