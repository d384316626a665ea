"""The extension's ops (csrc/) as typed Python functions, with autograd and fake tensors.

    permute(x_TD, expert_ids_TK, E)      -> x_ND, slots_N, offsets_E1
    unpermute(y_ND, slots_N, weights_TK) -> y_TD
    grouped_mm(x_ND, w_EDH, offsets_E1)  -> y_NH

They have the contracts of the pure-PyTorch functions of the same names in `moe.py` (the
reference they are tested against). The C++ side declares the schemas (`csrc/moe_ops.cpp`) and
the CPU and CUDA kernels; this file registers, from Python, how each op differentiates
(`torch.library.register_autograd`) and what shapes it returns without running
(`torch.library.register_fake`, for `torch.compile`). The wrappers make inputs contiguous and
cast router weights to the rows' dtype, since the kernels require both.

`backend(name)` picks the implementation of the MoE layer's three steps: "torch" (moe.py),
"ext" (these ops) or "auto" (ext when it was built). `python -m minimoe.ops` says what was
built.
"""
from __future__ import annotations

import sys

import torch

from .moe import TORCH, Backend

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.minimoe.*)
    EXT_AVAILABLE = True
except ImportError as e:  # a pure-Python install: the torch backend still works
    EXT_AVAILABLE = False
    print(f"minimoe: C++/CUDA extension not built ({e}); using the PyTorch backend. "
          f"Build it with: pip install --no-build-isolation -e .", file=sys.stderr)


def permute(x_TD: torch.Tensor, expert_ids_TK: torch.Tensor, num_experts: int):
    """Rows grouped by expert (ascending expert, then ascending slot); see moe.permute."""
    return torch.ops.minimoe.permute(x_TD.contiguous(), expert_ids_TK.contiguous(), num_experts)


def unpermute(y_ND: torch.Tensor, slots_N: torch.Tensor, weights_TK: torch.Tensor
              ) -> torch.Tensor:
    """y_TD[t] = sum_k weights_TK[t, k] * (row of slot t*K + k), float32 accumulation."""
    return torch.ops.minimoe.unpermute(y_ND.contiguous(), slots_N.contiguous(),
                                       weights_TK.to(y_ND.dtype).contiguous())


def grouped_mm(x_ND: torch.Tensor, w_EDH: torch.Tensor, offsets_E1: torch.Tensor
               ) -> torch.Tensor:
    """y[rows of e] = x[rows of e] @ w_EDH[e]; empty experts are legal."""
    return torch.ops.minimoe.grouped_mm(x_ND.contiguous(), w_EDH.contiguous(),
                                        offsets_E1.contiguous())


if EXT_AVAILABLE:
    # --- fake (meta) implementations: output shapes from input shapes ------------------------

    @torch.library.register_fake("minimoe::permute")
    def _(x, expert_ids, num_experts):
        N = expert_ids.shape[0] * expert_ids.shape[1]
        return (x.new_empty(N, x.shape[1]), expert_ids.new_empty(N),
                expert_ids.new_empty(num_experts + 1))

    @torch.library.register_fake("minimoe::unpermute")
    def _(y, slots, weights):
        return y.new_empty(weights.shape[0], y.shape[1])

    @torch.library.register_fake("minimoe::unpermute_backward")
    def _(grad, y, slots, weights):
        return torch.empty_like(y), torch.empty_like(weights)

    @torch.library.register_fake("minimoe::grouped_mm")
    def _(x, w, offsets):
        return x.new_empty(x.shape[0], w.shape[2])

    @torch.library.register_fake("minimoe::grouped_mm_wgrad")
    def _(x, grad, offsets):
        return x.new_empty(offsets.shape[0] - 1, x.shape[1], grad.shape[1])

    # --- autograd ------------------------------------------------------------------------------

    def _permute_setup(ctx, inputs, output):
        x, expert_ids, _ = inputs
        ctx.save_for_backward(output[1])
        ctx.T, ctx.K = expert_ids.shape

    def _permute_backward(ctx, grad_rows, _grad_slots, _grad_offsets):
        # Each token's gradient is the sum of its K rows': an unpermute with unit weights.
        (slots,) = ctx.saved_tensors
        ones = grad_rows.new_ones(ctx.T, ctx.K)
        return torch.ops.minimoe.unpermute(grad_rows.contiguous(), slots, ones), None, None

    torch.library.register_autograd("minimoe::permute", _permute_backward,
                                    setup_context=_permute_setup)

    def _save_inputs(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _unpermute_backward(ctx, grad):
        y, slots, weights = ctx.saved_tensors
        grad_y, grad_w = torch.ops.minimoe.unpermute_backward(grad.contiguous(), y, slots, weights)
        return grad_y, None, grad_w

    torch.library.register_autograd("minimoe::unpermute", _unpermute_backward,
                                    setup_context=_save_inputs)

    def _grouped_mm_backward(ctx, grad):
        x, w, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.ops.minimoe.grouped_mm(grad, w.transpose(1, 2).contiguous(), offsets)
        grad_w = torch.ops.minimoe.grouped_mm_wgrad(x, grad, offsets)
        return grad_x, grad_w, None

    torch.library.register_autograd("minimoe::grouped_mm", _grouped_mm_backward,
                                    setup_context=_save_inputs)


def built_kernels() -> list[str]:
    """Devices for which the extension registered kernels: [] if it is not built."""
    if not EXT_AVAILABLE:
        return []
    return [key.lower() for key in ("CPU", "CUDA")
            if torch._C._dispatch_has_kernel_for_dispatch_key("minimoe::permute", key)]


BACKENDS = ("torch", "ext", "auto")


def backend(name: str) -> Backend:
    """The MoE backend for --moe-backend `name` (auto: ext when the extension was built)."""
    if name not in BACKENDS:
        raise ValueError(f"--moe-backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "ext" and not EXT_AVAILABLE:
        raise ValueError("--moe-backend ext, but the extension is not built; run "
                         "pip install --no-build-isolation -e . or use --moe-backend torch")
    if name == "torch" or (name == "auto" and not EXT_AVAILABLE):
        return TORCH
    return EXT


EXT = Backend("ext", permute, grouped_mm, unpermute)


if __name__ == "__main__":  # python -m minimoe.ops: what `pip install` built
    kernels = built_kernels()
    print("minimoe extension: " + (f"built, kernels for {' and '.join(kernels)}" if kernels
                                   else "not built (the torch backend is used)"))
