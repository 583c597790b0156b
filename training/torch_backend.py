"""The few process-group functions train.py calls, over torch.distributed, under Horovod's names (so the
trainer reads the same for both backends): ``train.py --backend torch`` under ``torchrun``.

Collectives here run in call order on every rank (torch.distributed matches by order, not by name; the
names are accepted and ignored)."""
import atexit
import os

import torch
import torch.distributed as dist

from dgc.torch import close_process_group

Sum, Min = dist.ReduceOp.SUM, dist.ReduceOp.MIN


def init(process_sets=None, backend=None):
    """Join the process group torchrun describes, over ``backend`` (a ``dist.init_process_group`` backend,
    e.g. "cpu:gloo,cuda:nccl"; None: "gloo"). On CUDA call ``torch.cuda.set_device(local_rank())`` before
    the first collective: NCCL and its object collectives use the current device."""
    if process_sets is not None:
        raise ValueError("the torch backend has no process sets (train.hierarchical needs --backend horovod)")
    if not dist.is_initialized():
        dist.init_process_group(backend or "gloo")
        atexit.register(close_process_group)     # torn down before the interpreter is


def rank():
    return dist.get_rank()


def size():
    return dist.get_world_size()


def local_rank():
    """This process's rank on its host (torchrun's LOCAL_RANK; 0 outside torchrun): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_size():
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def allgather_object(obj, name=None):
    gathered = [None] * size()
    dist.all_gather_object(gathered, obj)
    return gathered


def allreduce(tensor, op=Sum, name=None):
    result = tensor.clone()
    dist.all_reduce(result, op=op)
    return result


def barrier():
    dist.barrier()


def broadcast_parameters(state_dict, root_rank):
    for value in state_dict.values():
        dist.broadcast(value, root_rank)


def broadcast_optimizer_state(optimizer, root_rank):
    """Rank ``root_rank``'s optimizer state into every rank's (every rank resumed from the same checkpoint,
    so this only guards against a rank that loaded something else)."""
    state = [_on_cpu(optimizer.state_dict()) if rank() == root_rank else None]
    dist.broadcast_object_list(state, root_rank)
    optimizer.load_state_dict(state[0])


def _on_cpu(state):
    """``state`` (nested dicts and lists) with its tensors copied to the CPU: pickled, a CUDA tensor would be
    unpickled onto the sender's GPU on every rank (``load_state_dict`` puts them on each parameter's device)."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {key: _on_cpu(value) for key, value in state.items()}
    if type(state) in (list, tuple):
        return type(state)(_on_cpu(value) for value in state)
    return state
