"""Benchmark the MoE hot path: one table, every row a ratio against a baseline of the same run.

    python bench/moe_ops.py            # CPU rows (and GPU rows when CUDA is available)
    python bench/moe_ops.py --quick    # fewer repeats

CPU: a MoE layer's forward + backward (top-2 of 8 experts) at the tiny and small presets'
widths with the per-expert Python loop (`moe.moe_loop`, the simple reference) as the baseline,
the torch backend, the ext backend, the ext permute with PyTorch's native grouped matmul
(`F.grouped_mm`), and a dense FFN with the same active FLOPs (hidden = k x expert hidden) as
the ceiling. GPU: the same, plus grouped_mm against `F.grouped_mm` and a
dense matmul of equal FLOPs, and permute + unpermute against a device copy of the same bytes, in
TFLOP/s and GB/s for a Show-o-scale layer (16k tokens, top-2 of 8, d 2048, hidden 8192, bf16).
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from minimoe import moe, ops
from minimoe.cli import about

SHAPES = {  # name: (tokens, d_model, expert hidden, experts, k)
    "tiny": (4160, 128, 64, 8, 2),  # a tiny-preset batch (32 rows x 130), Taylor split of 512
    "small": (8192, 512, 256, 8, 2),  # small-preset widths, Taylor split of 2048
}
SHOWO = (16384, 2048, 8192, 8, 2)


def timed(fn, repeats: int, device) -> float:
    """Best (minimum) seconds of fn() over `repeats` calls after two warm-up calls: on a shared
    machine the minimum is the least disturbed measurement (as timeit advises)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def layer_inputs(shape, device, dtype):
    T, D, H, E, K = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, D, generator=g).to(device, dtype).requires_grad_()
    w1 = (torch.randn(E, D, H, generator=g) * D ** -0.5).to(device, dtype).requires_grad_()
    w2 = (torch.randn(E, H, D, generator=g) * H ** -0.5).to(device, dtype).requires_grad_()
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(device)
    weights = torch.full((T, K), 1.0 / K, device=device, dtype=dtype)
    return x, w1, w2, ids, weights


def native_grouped_mm(x_ND, w_EDH, offsets_E1):
    """PyTorch's own grouped matmul (offsets as int32 row ends), the peer of ext grouped_mm."""
    return F.grouped_mm(x_ND, w_EDH, offs=offsets_E1[1:].to(torch.int32))


def moe_layer_rows(name, shape, device, dtype, repeats):
    T, D, H, E, K = shape
    x, w1, w2, ids, weights = layer_inputs(shape, device, dtype)
    kept = torch.ones_like(ids, dtype=torch.bool)

    def step(run):
        def go():
            y = run()
            y.float().square().mean().backward()
        return go

    dense1 = (torch.randn(D, K * H, device=device, dtype=dtype) * D ** -0.5).requires_grad_()
    dense2 = (torch.randn(K * H, D, device=device, dtype=dtype) * H ** -0.5).requires_grad_()
    runs = {"per-expert loop (baseline)": lambda: moe.moe_loop(x, weights, ids, w1, w2),
            "torch backend": lambda: moe.experts_forward(x, weights, ids, kept, w1, w2, moe.TORCH)}
    if ops.EXT_AVAILABLE:
        runs["ext backend"] = lambda: moe.experts_forward(x, weights, ids, kept, w1, w2, ops.EXT)
        if hasattr(F, "grouped_mm"):
            native = moe.Backend("native", ops.permute, native_grouped_mm, ops.unpermute)
            runs["ext permute + F.grouped_mm"] = lambda: moe.experts_forward(
                x, weights, ids, kept, w1, w2, native)
    runs["dense FFN, same active FLOPs"] = lambda: F.gelu(x @ dense1) @ dense2
    flops = 3 * 2 * T * K * 2 * D * H  # forward + backward (x3) of two matmuls per routed row
    times = {k: timed(step(v), repeats, device) for k, v in runs.items()}
    base = times["per-expert loop (baseline)"]
    return [(f"{name} MoE fwd+bwd {device.type} {str(dtype)[6:]}", k, t * 1e3,
             f"{flops / t / 1e12:.3f} TFLOP/s", base / t) for k, t in times.items()]


def gpu_op_rows(device, repeats):
    T, D, H, E, K = SHOWO
    dtype = torch.bfloat16
    x, w1, _, ids, weights = layer_inputs(SHOWO, device, dtype)
    x, w1 = x.detach(), w1.detach()
    rows, slots, offsets = ops.permute(x, ids, E)
    N = rows.shape[0]
    flops = 2 * N * D * H
    mm = {"dense matmul, equal FLOPs (baseline)": lambda: rows @ w1[0],
          "ext grouped_mm": lambda: ops.grouped_mm(rows, w1, offsets)}
    if hasattr(F, "grouped_mm"):
        mm["torch F.grouped_mm"] = lambda: native_grouped_mm(rows, w1, offsets)
    out = []
    times = {k: timed(v, repeats, device) for k, v in mm.items()}
    base = times["dense matmul, equal FLOPs (baseline)"]
    out += [("Show-o grouped_mm cuda bf16", k, t * 1e3, f"{flops / t / 1e12:.1f} TFLOP/s", base / t)
            for k, t in times.items()]
    y = torch.randn(N, D, device=device, dtype=dtype)
    moved = 2 * (x.numel() + rows.numel()) * x.element_size()  # read + write, both directions
    copy_src = torch.empty(x.numel() + rows.numel(), device=device, dtype=dtype)
    copy_dst = torch.empty_like(copy_src)
    pu = {"device copy of the same bytes (baseline)": lambda: copy_dst.copy_(copy_src),
          "ext permute + unpermute": lambda: (ops.permute(x, ids, E),
                                              ops.unpermute(y, slots, weights)),
          "torch permute + unpermute": lambda: (moe.permute(x, ids, E),
                                                moe.unpermute(y, slots, weights))}
    times = {k: timed(v, repeats, device) for k, v in pu.items()}
    base = times["device copy of the same bytes (baseline)"]
    out += [("Show-o permute+unpermute cuda bf16", k, t * 1e3,
             f"{moved / 2 / t / 1e9:.0f} GB/s", base / t) for k, t in times.items()]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=about(__doc__))
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    args = p.parse_args(argv)
    repeats = 3 if args.quick else 10
    torch.manual_seed(0)
    rows = []
    cpu = torch.device("cpu")
    for name, shape in SHAPES.items():
        rows += moe_layer_rows(name, shape, cpu, torch.float32, repeats)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for name, shape in {**SHAPES, "Show-o": SHOWO}.items():
            rows += moe_layer_rows(name, shape, gpu, torch.bfloat16, repeats)
        if ops.EXT_AVAILABLE:
            rows += gpu_op_rows(gpu, repeats)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"{device}, torch {torch.__version__}, extension "
          f"{'built' if ops.EXT_AVAILABLE else 'not built'}; best of {repeats}")
    print("| case | implementation | ms | throughput | speed vs baseline |")
    print("|---|---|---|---|---|")
    for case, impl, ms, tput, ratio in rows:
        print(f"| {case} | {impl} | {ms:.2f} | {tput} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
