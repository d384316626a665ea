"""The extension's ops against the float64 PyTorch reference (moe.py), their gradients,
torch.library.opcheck and torch.compile; CPU always, CUDA when a GPU is present. (Their bad
inputs are rows of test_bad_input.py.)  Run: pytest -q tests/test_ops.py"""
import pytest
import torch

from minimoe import moe, ops
from minimoe.model import FFN

needs_ext = pytest.mark.skipif(not ops.EXT_AVAILABLE, reason="extension not built")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"cpu": [torch.float32, torch.float64],
          "cuda": [torch.float32, torch.bfloat16, torch.float16]}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def cases():
    """(T, K, E, D, H, how expert ids are drawn)."""
    return [(1, 1, 4, 8, 4, "random"), (7, 2, 5, 6, 3, "skip_last"),
            (16, 2, 8, 16, 24, "random"), (9, 3, 3, 4, 5, "all_to_one"),
            (6, 4, 4, 5, 7, "k_equals_e"), (33, 1, 6, 40, 36, "random")]


def draw_ids(T, K, E, how, g):
    if how == "all_to_one":
        return torch.full((T, 1), 2).repeat(1, K) if K == 1 else \
            torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).clamp(max=0) + \
            torch.arange(K)  # experts 0..K-1 only, expert 0 from every token
    if how == "k_equals_e":
        return torch.stack([torch.randperm(E, generator=g) for _ in range(T)])
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    return ids.clamp(max=E - 2) if how == "skip_last" else ids  # skip_last: an empty expert


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", cases())
def test_ops_match_the_float64_reference(device, case):
    T, K, E, D, H, how = case
    g = torch.Generator().manual_seed(T * 100 + K)
    ids = draw_ids(T, K, E, how, g)
    x64 = torch.randn(T, D, generator=g, dtype=torch.float64)
    w64 = torch.randn(E, D, H, generator=g, dtype=torch.float64)
    weights64 = torch.rand(T, K, generator=g, dtype=torch.float64)
    ref_rows, ref_slots, ref_offsets = moe.permute(x64, ids, E)
    for dtype in DTYPES[device]:
        tol = TOL[dtype]
        x, w, weights = (t.to(device, dtype) for t in (x64, w64, weights64))
        rows, slots, offsets = ops.permute(x, ids.to(device), E)
        assert torch.equal(slots.cpu(), ref_slots) and torch.equal(offsets.cpu(), ref_offsets)
        assert torch.equal(rows.cpu().double(), x.cpu().double()[ref_slots // K])
        y = ops.grouped_mm(rows, w, offsets)
        ref_y = moe.grouped_mm(ref_rows, w64, ref_offsets)
        assert torch.allclose(y.cpu().double(), ref_y, rtol=tol, atol=tol * D), dtype
        out = ops.unpermute(y, slots, weights)
        ref_out = moe.unpermute(ref_y, ref_slots, weights64)
        assert torch.allclose(out.cpu().double(), ref_out, rtol=tol, atol=tol * D * K), dtype


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_give_the_same_results(device):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 12, generator=g).to(device)[:, ::2]  # a strided view
    ids = torch.randint(0, 3, (2, 8), generator=g).T.to(device)  # transposed
    rows, slots, offsets = ops.permute(x, ids, 3)
    ref = moe.permute(x.contiguous(), ids.contiguous(), 3)
    assert all(torch.equal(a, b) for a, b in zip((rows, slots, offsets), ref))
    w = torch.randn(3, 8, 6, generator=g).to(device).transpose(1, 2)  # [3, 6, 8] view
    assert torch.allclose(ops.grouped_mm(rows, w, offsets), moe.grouped_mm(rows, w, offsets),
                          atol=1e-5)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_the_reference(device):
    g = torch.Generator().manual_seed(7)
    T, K, E, D, H = 10, 2, 4, 6, 5
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).clamp(max=2)
    leaves = [torch.randn(T, D, generator=g, dtype=torch.float64),
              torch.randn(E, D, H, generator=g, dtype=torch.float64),
              torch.rand(T, K, generator=g, dtype=torch.float64)]

    def run(impl, x, w, weights):
        rows, slots, offsets = impl.permute(x, ids.to(x.device), E)
        return impl.unpermute(impl.grouped_mm(rows, w, offsets), slots, weights)

    ours = [t.detach().clone().to(device).requires_grad_() for t in leaves]
    theirs = [t.detach().clone().requires_grad_() for t in leaves]
    probe = torch.randn(T, H, generator=g, dtype=torch.float64)
    (run(ops.EXT, *ours) * probe.to(device)).sum().backward()
    (run(moe.TORCH, *theirs) * probe).sum().backward()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad.cpu(), b.grad, atol=1e-10)
    fresh = [t.detach().clone().to(device).requires_grad_() for t in leaves]
    assert torch.autograd.gradcheck(lambda *t: run(ops.EXT, *t), fresh)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    g = torch.Generator().manual_seed(11)
    T, K, E, D, H = 6, 2, 3, 4, 5
    x = torch.randn(T, D, generator=g).to(device)
    ids = torch.randint(0, E, (T, K), generator=g).to(device)
    rows, slots, offsets = torch.ops.minimoe.permute(x, ids, E)
    w = torch.randn(E, D, H, generator=g).to(device)
    y = torch.randn(T * K, H, generator=g).to(device)
    weights = torch.rand(T, K, generator=g).to(device)
    grad = torch.randn(T, H, generator=g).to(device)
    samples = {
        torch.ops.minimoe.permute.default: (x.requires_grad_(), ids, E),
        torch.ops.minimoe.unpermute.default: (y.requires_grad_(), slots, weights.requires_grad_()),
        torch.ops.minimoe.unpermute_backward.default: (grad, y.detach(), slots, weights.detach()),
        torch.ops.minimoe.grouped_mm.default: (rows.detach().requires_grad_(), w.requires_grad_(),
                                               offsets),
        torch.ops.minimoe.grouped_mm_wgrad.default: (rows.detach(), y.detach(), offsets),
    }
    for op, args in samples.items():
        torch.library.opcheck(op, args)


@needs_ext
def test_a_moe_layer_under_torch_compile_is_one_graph_and_matches_eager():
    """With the extension's ops no shape or branch of the layer is read on the host, dropped
    (padding) slots included, so torch.compile traces it whole (fullgraph raises at a graph
    break), forward and backward, and computes what eager does."""
    torch.manual_seed(0)
    layer = moe.MoE(moe.MoESpec(16, 8, num_experts=4, top_k=2), ops.EXT)
    x = torch.randn(2, 5, 16, requires_grad=True)
    valid = torch.ones(10, dtype=torch.bool)
    valid[7:] = False  # padding: its slots go to the sink
    info = moe.TokenInfo(torch.zeros(10, dtype=torch.bool), valid)
    eager = layer(x, info)[0]
    assert torch.equal(eager.reshape(10, 16)[7:], torch.zeros(3, 16))
    eager.square().sum().backward()
    w1 = layer.experts.w1_EDH
    want = x.grad.clone(), w1.grad.clone()
    x.grad, w1.grad = None, None
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x, info)[0]
    y.square().sum().backward()
    assert torch.allclose(y, eager, atol=1e-6)
    assert torch.allclose(x.grad, want[0], atol=1e-5)
    assert torch.allclose(w1.grad, want[1], atol=1e-5)


@needs_ext
def test_both_backends_give_the_same_moe_layer():
    torch.manual_seed(0)
    spec = moe.MoESpec(16, 8, num_experts=4, top_k=2, num_shared=1)
    a = moe.MoE(spec, moe.TORCH, shared_ffn=FFN).double()
    b = moe.MoE(spec, ops.EXT, shared_ffn=FFN).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    ya, yb = a(x)[0], b(x)[0]
    assert torch.allclose(ya, yb, atol=1e-12)
    ga = torch.autograd.grad(ya.sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.sum(), list(b.parameters()))
    assert all(torch.allclose(p, q, atol=1e-10) for p, q in zip(ga, gb))


def test_without_the_extension_auto_falls_back_and_ext_is_refused(monkeypatch):
    monkeypatch.setattr(ops, "EXT_AVAILABLE", False)
    assert ops.backend("auto") is moe.TORCH
    with pytest.raises(ValueError, match="not built"):
        ops.backend("ext")
    with pytest.raises(ValueError, match="use one of torch, ext, auto"):
        ops.backend("fast")


def test_importing_without_the_extension_works_with_a_one_line_notice():
    import subprocess
    import sys
    code = ("import sys; sys.modules['minimoe._C'] = None\n"  # as if it had never been built
            "from minimoe import ops, moe\n"
            "import torch\n"
            "layer = moe.MoE(moe.MoESpec(8, 4, 4, 2), ops.backend('auto'))\n"
            "print(layer.experts.ops.name, layer(torch.randn(3, 8))[0].shape)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == "torch"
    notice = [l for l in run.stderr.splitlines() if "extension not built" in l]
    assert len(notice) == 1 and "pip install --no-build-isolation -e ." in notice[0]


@needs_ext
def test_the_cpu_kernels_are_always_built():
    assert "cpu" in ops.built_kernels()


@needs_ext
def test_importing_the_package_alone_registers_the_ops():
    """`import minimoe` in a fresh interpreter is enough for torch.ops.minimoe.* (as the
    extension-cpp package does), with no other minimoe module imported by hand."""
    import subprocess
    import sys
    code = ("import torch, minimoe\n"
            "print(torch.ops.minimoe.permute.default.name())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "minimoe::permute"
