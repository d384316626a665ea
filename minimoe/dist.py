"""Parallelism beside the model (DESIGN section 8): process setup and expert parallelism.

    info = setup()            # under torchrun: rank, world size, device; gloo on CPU, NCCL on GPU
    print0("only rank 0 prints")

Expert parallelism: in a group of N ranks each rank holds E/N of a MoE layer's routed experts
(rank r: experts r*E/N .. (r+1)*E/N - 1). `expert_parallel_forward` sends every routed row of
this rank's tokens to the rank owning its expert and brings the results back:

    permute by global expert -> exchange row counts -> all_to_all rows -> regroup by local
    expert -> grouped expert FFNs -> undo the regrouping -> all_to_all back -> unpermute

Both exchanges go through torch.distributed.nn.functional.all_to_all_single, which carries
gradients, so the backward pass makes the same trip in reverse. An expert that receives no
rows, on any rank, is legal. Not yet wired into train.py (the scale-out issue continues there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from .moe import TORCH, Backend, expert_ffn

TIMEOUT = timedelta(minutes=10)  # a collective waiting this long (a rank died) raises instead


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return DistInfo(rank, world, local, device)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default group, (0, 1) without one."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def data_parallel(model):
    """The model wrapped in DistributedDataParallel when several processes train it (DDP
    broadcasts rank 0's parameters and buffers, so every rank starts identical), else itself."""
    if rank_world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def print0(*args, **kwargs) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs)


def expert_parallel_forward(x_TD: torch.Tensor, weights_TK: torch.Tensor,
                            expert_ids_TK: torch.Tensor, kept_TK: torch.Tensor,
                            w1_local: torch.Tensor, w2_local: torch.Tensor, num_experts: int,
                            group=None, ops: Backend = TORCH) -> torch.Tensor:
    """The routed part of a MoE layer with its experts spread over `group`.

    Args:
        x_TD, weights_TK, expert_ids_TK (global ids), kept_TK: this rank's tokens and routing.
        w1_local [E/N, D, H], w2_local [E/N, H, D]: this rank's experts.
    Returns:
        y_TD = sum over kept k of weights_TK[t, k] * expert_{ids[t, k]}(x_t), as moe.experts_forward.
    """
    N = dist.get_world_size(group)
    E_local = w1_local.shape[0]
    if E_local * N != num_experts:
        raise ValueError(f"{num_experts} experts do not split over {N} ranks as {E_local} each")
    # 1. Rows grouped by global expert (dropped slots to a sink after the last expert).
    sink_ids_TK = expert_ids_TK.masked_fill(~kept_TK, num_experts)
    x_ND, slots_N, offsets = ops.permute(x_TD, sink_ids_TK, num_experts + 1)
    counts_E = (offsets[1:num_experts + 1] - offsets[:num_experts])
    n_routed = int(offsets[num_experts])
    # 2. Every rank learns how many rows of each of its experts each other rank sends.
    recv_counts = torch.empty_like(counts_E)
    dist.all_to_all_single(recv_counts, counts_E, group=group)
    send_split = counts_E.view(N, E_local).sum(1).tolist()
    recv_by_source = recv_counts.view(N, E_local)  # [source rank, local expert]
    recv_split = recv_by_source.sum(1).tolist()
    # 3. Rows travel to the owners of their experts.
    received = dist_fn.all_to_all_single(
        x_ND.new_empty(sum(recv_split), x_ND.shape[1]), x_ND[:n_routed].contiguous(),
        recv_split, send_split, group=group)
    # 4. Received rows come as [source][local expert]; the experts want [local expert][source].
    order = _expert_major_order(recv_by_source)
    local_offsets = torch.cat([counts_E.new_zeros(1), recv_by_source.sum(0).cumsum(0)])
    y_local = expert_ffn(received[order], w1_local, w2_local, local_offsets, ops)
    y_back = torch.empty_like(y_local).index_copy(0, order, y_local)  # undo the regrouping
    # 5. Results travel home; the sink rows stay zero; the combine is the usual unpermute.
    y_routed = dist_fn.all_to_all_single(
        y_back.new_empty(n_routed, y_back.shape[1]), y_back, send_split, recv_split,
        group=group)
    y_ND = torch.cat([y_routed, y_routed.new_zeros(x_ND.shape[0] - n_routed, y_routed.shape[1])])
    return ops.unpermute(y_ND, slots_N, weights_TK.masked_fill(~kept_TK, 0).to(y_ND.dtype))


def _expert_major_order(counts_SE: torch.Tensor) -> torch.Tensor:
    """Indices that reorder rows laid out [source][expert] (counts_SE rows each) into
    [expert][source] order."""
    S, E = counts_SE.shape
    starts = torch.cat([counts_SE.new_zeros(1), counts_SE.flatten().cumsum(0)[:-1]]).view(S, E)
    return torch.cat([torch.arange(int(starts[s, e]), int(starts[s, e] + counts_SE[s, e]),
                                   device=counts_SE.device)
                      for e in range(E) for s in range(S)]
                     + [counts_SE.new_zeros(0)])
