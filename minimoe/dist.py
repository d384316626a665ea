"""Parallelism beside the model (docs/scaling.md): process setup, data parallelism, expert
parallelism and FSDP2, each applied to the single-device model from the outside.

    info = setup()            # under torchrun: rank, world size, device; gloo on CPU, NCCL on GPU
    print0("only rank 0 prints")

Expert parallelism (--ep N): in a group of N ranks each rank holds E/N of a MoE layer's routed
experts (rank r: experts r*E/N .. (r+1)*E/N - 1). `parallelize_experts_` replaces every MoE
layer's `moe.Experts` with a `ShardedExperts` of the same interface, whose forward
(`expert_parallel_forward`) sends every routed row of this rank's tokens to the rank owning its
expert and brings the results back:

    permute by global expert -> exchange row counts -> all_to_all rows -> regroup by local
    expert -> grouped expert FFNs -> undo the regrouping -> all_to_all back -> unpermute

Both exchanges go through torch.distributed.nn.functional.all_to_all_single, which carries
gradients, so the backward pass makes the same trip in reverse. An expert that receives no
rows, on any rank, is legal.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch.nn.parallel import DistributedDataParallel

from .moe import TORCH, Backend, expert_ffn

TIMEOUT = timedelta(minutes=10)  # a collective waiting this long (a rank died) raises instead


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP tensor (a DTensor), or the tensor itself. Duck-typed: the
    DTensor module costs half a second at every start and only FSDP runs need it."""
    return t.to_local() if hasattr(t, "to_local") else t


def _whole(t: torch.Tensor) -> torch.Tensor:
    """An FSDP tensor gathered from every rank (a collective), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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
        signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    return DistInfo(rank, world, local, device)


LOST_RANK = ("error: stopped because another rank failed (see torchrun's report below); the "
             "last complete checkpoint is kept: fix the cause and rerun with --resume")
# What gloo and NCCL say when the other end of a collective is gone.
PEER_ERRORS = ("Connection reset", "Connection closed", "connection closed", "NCCL", "gloo",
               "timed out", "Timed out")


def _stopped_by_torchrun(signum, frame):
    # torchrun stops every rank with SIGTERM when one fails: say so, once, from rank 0.
    if int(os.environ.get("RANK", "0")) == 0:
        print(LOST_RANK, file=sys.stderr, flush=True)
    os._exit(1)  # no cleanup that could wait on the dead rank


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank died or hung."""
    return rank_world()[1] > 1 and (isinstance(error, dist.DistError)
                                    or any(s in str(error) for s in PEER_ERRORS))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default group, (0, 1) without one."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def data_parallel(model):
    """The model wrapped in DistributedDataParallel when several processes train it (DDP
    broadcasts rank 0's parameters and buffers, so every rank starts identical), else itself."""
    if rank_world()[1] == 1 or is_fsdp(model):  # FSDP reduces gradients itself
        return model
    if hasattr(model, "moe_layers") and experts_sharded(model):
        ignore_experts_in_ddp(model)
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
        y_TD = sum over kept k of weights_TK[t, k] * expert_{ids[t, k]}(x_t), as
        moe.experts_forward.
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


class ShardedExperts(torch.nn.Module):
    """This rank's slice of a MoE layer's experts, in the place of its `moe.Experts`: the same
    call, computed with every rank of the expert-parallel group."""

    def __init__(self, experts, ep: "ExpertParallel"):
        super().__init__()
        self.num_experts, self.ops, self.group = experts.num_experts, experts.ops, ep.group
        per = experts.num_experts // ep.size
        mine = slice(ep.rank * per, (ep.rank + 1) * per)
        self.w1_EDH = torch.nn.Parameter(experts.w1_EDH.data[mine].clone())
        self.w2_EHD = torch.nn.Parameter(experts.w2_EHD.data[mine].clone())

    def forward(self, x_TD, weights_TK, expert_ids_TK, kept_TK) -> torch.Tensor:
        return expert_parallel_forward(x_TD, weights_TK, expert_ids_TK, kept_TK, self.w1_EDH,
                                       self.w2_EHD, self.num_experts, self.group, self.ops)


# --- expert parallelism in training (--ep N) -------------------------------------------------
#
# N consecutive ranks form an expert-parallel group that holds each MoE layer's experts once
# (rank i of the group: experts i*E/N .. (i+1)*E/N - 1); the world is world/N such groups, and
# the ranks holding the same experts in different groups are that expert shard's data-parallel
# replicas. Non-expert weights are averaged by DDP over every rank; expert gradients are summed
# over the replicas here. Checkpoints gather the shards, so they hold the whole model and load
# into any layout.


@dataclass
class ExpertParallel:
    group: object  # this rank's expert-parallel group
    replicas: object  # the ranks holding the same experts (None when ep == world)
    size: int
    rank: int  # position in the expert-parallel group


def expert_parallel(ep: int, num_experts: int) -> ExpertParallel:
    """Create the groups for --ep ep (every rank must call this)."""
    rank, world = rank_world()
    if ep < 1 or world % ep or num_experts % ep:
        raise ValueError(f"--ep {ep} must divide the number of processes ({world}) and "
                         f"--num-experts ({num_experts})")
    groups = [dist.new_group(list(range(g * ep, (g + 1) * ep))) for g in range(world // ep)]
    replicas = [dist.new_group(list(range(i, world, ep))) for i in range(ep)] \
        if world > ep else [None] * ep
    return ExpertParallel(groups[rank // ep], replicas[rank % ep], ep, rank % ep)


def sharded(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The expert weights that expert parallelism splits, by name."""
    return [(n, p) for n, p in model.named_parameters() if n.endswith(("w1_EDH", "w2_EHD"))]


def parallelize_experts_(model, ep: ExpertParallel) -> None:
    """Keep this rank's slice of every MoE layer's experts (the rest is freed)."""
    for _, layer in model.moe_layers():
        layer.experts = ShardedExperts(layer.experts, ep)


def experts_sharded(model) -> bool:
    return any(isinstance(layer.experts, ShardedExperts) for _, layer in model.moe_layers())


def ignore_experts_in_ddp(model) -> None:
    """DDP must not average expert shards: each rank holds different experts."""
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [n for n, _ in sharded(model)])


def sync_expert_grads_(model, ep: ExpertParallel) -> None:
    """Expert gradients hold the sum over this expert-parallel group's losses (the rows came
    through all_to_all); add the replicas' and divide by the world size, as DDP does."""
    world = rank_world()[1]
    for _, p in sharded(model):
        if p.grad is None:
            continue
        if ep.replicas is not None:
            dist.all_reduce(p.grad, group=ep.replicas)
        p.grad /= world


def clip_grad_norm_(model, max_norm: float, ep: ExpertParallel) -> torch.Tensor:
    """clip_grad_norm_ over the whole model: the replicated weights' gradients are equal on
    every rank, the expert shards' are summed over the expert-parallel group."""
    expert_ids = {id(p) for _, p in sharded(model)}
    with_grad = [p for p in model.parameters() if p.grad is not None]
    grads = [p.grad for p in with_grad]
    local = [_local(g) for p, g in zip(with_grad, grads) if id(p) not in expert_ids]
    shared = sum((g.float().square().sum() for g in local), torch.zeros(()))
    if is_fsdp(model):  # FSDP shards partition each weight: add the ranks' parts
        dist.all_reduce(shared)
    experts = sum((p.grad.float().square().sum() for _, p in sharded(model)
                   if p.grad is not None), torch.zeros(()))
    dist.all_reduce(experts, group=ep.group)
    norm = (shared + experts).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        _local(g).mul_(scale.to(g.dtype))
    return norm


def _gather(t: torch.Tensor, ep: ExpertParallel) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(ep.size)]
    dist.all_gather(parts, t.contiguous(), group=ep.group)
    return torch.cat(parts)


def full_model_state(model, ep: ExpertParallel | None) -> dict:
    """The model's state dict with every expert (or FSDP) shard gathered (a collective: every
    rank calls it), shaped as for a model on one process."""
    state = model.state_dict()
    if is_fsdp(model):
        state = {k: _whole(v).detach().clone()
                 for k, v in state.items()}
    for name, p in sharded(model) if ep is not None else ():
        state[name] = _gather(p.data, ep)
    return state


def full_optimizer_state(model, optimizer, ep: ExpertParallel | None) -> dict:
    """The optimizer's state dict with every shard gathered, indexed like a plain optimizer's
    (param group order), so that any layout loads it (a collective)."""
    opt_state = optimizer.state_dict()  # its per-parameter dicts are the live ones: copy
    if is_fsdp(model):
        opt_state["state"] = {i: {k: _whole(v)
                                  for k, v in slot.items()}
                              for i, slot in opt_state["state"].items()}
    index = _optimizer_index(optimizer)
    for _, p in sharded(model) if ep is not None else ():
        i = index[id(p)]
        if i in opt_state["state"]:  # per-expert state (AdamW's moments, Muon's momentum)
            slot = opt_state["state"][i]
            opt_state["state"][i] = {**slot, **{k: _gather(v, ep) for k, v in slot.items()
                                                if torch.is_tensor(v) and v.shape == p.shape}}
    return opt_state


def _optimizer_index(optimizer) -> dict[int, int]:
    """Parameter -> its index in optimizer.state_dict() (the order of the param groups)."""
    return {id(p): i for i, p in enumerate(p for g in optimizer.param_groups
                                           for p in g["params"])}


def shard_optimizer_state(opt_state: dict, model, optimizer, ep: ExpertParallel) -> dict:
    """A whole-model optimizer state cut to this rank's expert shards (for `optimizer`, made
    for the sharded model)."""
    index = _optimizer_index(optimizer)
    for _, p in sharded(model):
        i = index[id(p)]
        if i in opt_state["state"]:
            slot, per = opt_state["state"][i], p.shape[0]  # this rank's experts
            opt_state["state"][i] = {**slot, **{k: v[ep.rank * per:(ep.rank + 1) * per].clone()
                                                for k, v in slot.items() if torch.is_tensor(v)
                                                and v.dim() and v.shape[1:] == p.shape[1:]}}
    return opt_state


# --- FSDP2 (train config --fsdp true, under torchrun) -----------------------------------------
#
# Every block, then the whole model, is wrapped with fully_shard: each rank keeps 1/world of
# every weight, gradient and AdamW state, and gathers a block's weights just before using it.
# Checkpoints hold the whole model (gathered) in the same format as without FSDP.


def fsdp_(model) -> None:
    """Shard `model` in place with FSDP2 (a collective: every rank calls it). Expert shards of
    --ep are left to expert parallelism: FSDP shards the non-expert weights."""
    from torch.distributed.fsdp import fully_shard  # here: half a second to import, FSDP only
    experts = {p for _, p in sharded(model)} if experts_sharded(model) else set()
    for block in model.blocks:
        fully_shard(block, ignored_params=experts & set(block.parameters()) or None)
    fully_shard(model, ignored_params=experts or None)
    model.fsdp = True


def is_fsdp(model) -> bool:
    return getattr(model, "fsdp", False)


def load_fsdp_optimizer_state(optimizer, opt_state: dict) -> None:
    """A whole-model optimizer state loaded into the optimizer of an FSDP model: each rank
    keeps the shard of every state tensor that matches its shard of the parameter."""
    from torch.distributed.tensor import distribute_tensor  # here: FSDP only, slow to import
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, slot in opt_state["state"].items():
        p = params[int(i)]
        state[i] = {k: distribute_tensor(v.to(p.dtype), p.device_mesh, p.placements)
                    if torch.is_tensor(v) and v.dim() > 0 and hasattr(p, "device_mesh") else v
                    for k, v in slot.items()}
    optimizer.load_state_dict({**opt_state, "state": state})
