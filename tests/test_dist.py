"""Expert parallelism on 2 CPU processes (gloo): the layer spread over ranks equals the layer on
one process, forward and backward, including an expert that receives no rows.
Run: pytest -q tests/test_dist.py"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minimoe import moe
from minimoe.dist import _expert_major_order, expert_parallel_forward

WORLD, E, D, H, T, K = 2, 4, 8, 6, 10, 2


def spawn(target, *args) -> None:
    """Run target(rank, *args, failures) on WORLD processes; fail on an error or a hang."""
    ctx = mp.get_context("spawn")
    failures = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, *args, failures)) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung"
    errors = [failures.get() for _ in range(failures.qsize())] if not failures.empty() else []
    assert all(p.exitcode == 0 for p in procs) and not errors, errors


def _worker(rank: int, store: str, backend: str, failures):
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=WORLD)
        ops = moe.TORCH
        if backend == "ext":
            from minimoe import ops as ext
            ops = ext.EXT
        torch.manual_seed(0)  # the same full layer on every rank
        w1 = torch.randn(E, D, H, dtype=torch.float64)
        w2 = torch.randn(E, H, D, dtype=torch.float64)
        g = torch.Generator().manual_seed(100 + rank)  # different tokens on every rank
        x = torch.randn(T, D, generator=g, dtype=torch.float64, requires_grad=True)
        ids = torch.stack([torch.randperm(E - 1, generator=g)[:K] for _ in range(T)])  # e3 idle
        weights = torch.rand(T, K, generator=g, dtype=torch.float64)
        kept = torch.ones(T, K, dtype=torch.bool)
        kept[0, 1] = False  # a dropped slot travels nowhere
        E_local = E // WORLD
        w1_local = w1[rank * E_local:(rank + 1) * E_local].clone().requires_grad_()
        w2_local = w2[rank * E_local:(rank + 1) * E_local].clone().requires_grad_()
        y = expert_parallel_forward(x, weights, ids, kept, w1_local, w2_local, E, ops=ops)
        w1_full, w2_full = w1.clone().requires_grad_(), w2.clone().requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        ref = moe.experts_forward(x_ref, weights, ids, kept, w1_full, w2_full)
        assert torch.allclose(y, ref, atol=1e-10), "forward"
        probe = torch.randn(T, D, generator=g, dtype=torch.float64)
        (y * probe).sum().backward()
        (ref * probe).sum().backward()
        assert torch.allclose(x.grad, x_ref.grad, atol=1e-10), "input gradient"
        for full, local in ((w1_full, w1_local), (w2_full, w2_local)):
            dist.all_reduce(full.grad)  # every rank's tokens reach the owner's experts
            want = full.grad[rank * E_local:(rank + 1) * E_local]
            assert torch.allclose(local.grad, want, atol=1e-10), "expert gradient"
        assert (w1_full.grad[E - 1] == 0).all(), "the idle expert got no gradient"
        dist.destroy_process_group()
    except Exception as e:  # reported to the parent, which fails the test
        failures.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "ext"])
def test_expert_parallel_layer_equals_the_single_process_layer(tmp_path, backend):
    if backend == "ext":
        from minimoe import ops
        if not ops.EXT_AVAILABLE:
            pytest.skip("extension not built")
    spawn(_worker, str(tmp_path / "store"), backend)


def test_expert_major_order_regroups_source_blocks():
    counts = torch.tensor([[2, 1], [0, 3]])  # rows: s0e0 s0e0 s0e1 s1e1 s1e1 s1e1
    assert _expert_major_order(counts).tolist() == [0, 1, 2, 3, 4, 5]
    counts = torch.tensor([[1, 2], [2, 1]])  # s0e0 | s0e1 s0e1 | s1e0 s1e0 | s1e1
    assert _expert_major_order(counts).tolist() == [0, 3, 4, 1, 2, 5]


def _ddp_worker(rank: int, store: str, failures):
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP
        from minimoe.batches import Batcher
        from minimoe.build import build_model
        from minimoe.data import BuiltinData
        from minimoe.losses import label_counts, task_losses, total_loss
        from minimoe.sequences import concat
        from minimoe.tokenizers import ImageTokenizer, Vocab
        from minimoe.trainer import make_optimizer
        from minimoe.vq import VQModel
        from conftest import micro_config
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=WORLD)
        cfg = micro_config(batch_t2i=3, batch_mmu=2, batch_lm=1)
        torch.manual_seed(0)
        tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
        vocab = Vocab(cfg.vq.vq_codes)
        batcher = Batcher(cfg, BuiltinData(16, ("shapes",), "train", 0), vocab, tok)
        batches = [batcher(step) for step in range(WORLD)]  # rank r's batch: step r

        def model_and_optimizer():
            torch.manual_seed(1)
            model = build_model(cfg)[0].double()
            return model, make_optimizer(model, cfg)

        def step(model, optimizer, batch, data_parallel):
            out = model(batch.tokens_BL, batch.groups_BL)
            counts = label_counts([batch], data_parallel) if data_parallel else None
            loss = total_loss(task_losses(out.logits_BLV.double(), batch, counts, WORLD), cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        model, opt = model_and_optimizer()
        step(DDP(model), opt, batches[rank], data_parallel=True)
        alone, opt_alone = model_and_optimizer()
        step(alone, opt_alone, concat(batches), data_parallel=False)  # one process, both batches
        for (name, a), b in zip(model.named_parameters(), alone.parameters()):
            assert torch.allclose(a, b, atol=1e-10), name
        dist.destroy_process_group()
    except Exception as e:
        failures.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise


@pytest.mark.slow
def test_a_ddp_step_equals_one_process_on_the_combined_batch(tmp_path):
    spawn(_ddp_worker, str(tmp_path / "store"))


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def torchrun(flags: list[str], processes: int = 2):
    """train.py under torchrun on `processes` CPU ranks (a free port, bounded in time)."""
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
               str(processes), "--master_port", str(port), str(ROOT / "train.py"), *flags]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def train_alone(flags: list[str]):
    import subprocess
    import sys
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env={**os.environ})
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def moe_losses(folder) -> list[float]:
    """Loss and gradient norm of every logged MoE step (the norm catches gradient scaling,
    which AdamW's update would hide)."""
    import json
    return [v for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines())
            if r["stage"] == "moe" and "loss" in r for v in (r["loss"], r["grad_norm"])]


@pytest.mark.slow
def test_torchrun_two_processes_then_one_process_resumes(tmp_path):
    """2 ranks train a micro MoE run (each its own data shard); the checkpoint holds the whole
    model, so 1 process resumes it."""
    import json
    from test_scripts import MICRO, MOE
    out = tmp_path / "run"
    flags = MICRO + MOE + ["--dense-steps", "4", "--moe", "random", "--out", str(out)]
    torchrun(flags)
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in log if "loss" in r]
    assert stages.count("dense") == 4 and stages.count("moe") == 4, "rank 0 alone logs"
    again = train_alone(flags + ["--resume", "--moe-steps", "6"])
    assert "resuming moe at step 4" in again.stdout
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 6


@pytest.mark.slow
def test_expert_parallel_training_equals_data_parallel_and_resumes_alone(tmp_path):
    """--ep 2 (experts split over the 2 ranks; with --fsdp true also the rest sharded) trains
    exactly like plain data parallelism from the same dense model, and its checkpoint (shards
    gathered) resumes in 1 process exactly like the data-parallel one."""
    from test_scripts import MICRO
    dense = tmp_path / "dense"
    train_alone(MICRO + ["--dense-steps", "3", "--out", str(dense)])
    # float32: in bf16 the two layouts' matmuls and gradient sums round differently
    moe = ["--moe", "naive", "--num-experts", "4", "--moe-steps", "4", "--autocast", "off",
           "--init", str(dense / "ckpt.pt")]
    torchrun(MICRO + moe + ["--ep", "2", "--out", str(tmp_path / "ep")])
    torchrun(MICRO + moe + ["--out", str(tmp_path / "dp")])
    ep, dp = moe_losses(tmp_path / "ep"), moe_losses(tmp_path / "dp")
    assert len(ep) == 8 and max(abs(a - b) for a, b in zip(ep, dp)) < 1e-4, (ep, dp)
    adamw = ["--optimizer", "adamw"]  # FSDP shards Muon's matrices
    torchrun(MICRO + moe + adamw + ["--ep", "2", "--fsdp", "true",
                                    "--out", str(tmp_path / "ep_fsdp")])
    torchrun(MICRO + moe + adamw + ["--out", str(tmp_path / "dp_adamw")])
    ep_fsdp = moe_losses(tmp_path / "ep_fsdp")  # experts by --ep, the rest sharded by FSDP
    dp_adamw = moe_losses(tmp_path / "dp_adamw")
    assert max(abs(a - b) for a, b in zip(ep_fsdp, dp_adamw)) < 1e-4, (ep_fsdp, dp_adamw)
    for name in ("ep", "dp"):
        train_alone(MICRO + ["--moe", "naive", "--num-experts", "4", "--moe-steps", "6",
                             "--resume", "--out", str(tmp_path / name)])
    ep, dp = moe_losses(tmp_path / "ep"), moe_losses(tmp_path / "dp")
    assert len(ep) == 12 and max(abs(a - b) for a, b in zip(ep[8:], dp[8:])) < 1e-4


def test_ep_that_does_not_divide_is_refused(tmp_path, capsys):
    import train
    from test_scripts import MICRO, fails
    fails(capsys, train.main, MICRO + ["--moe", "naive", "--num-experts", "4", "--ep", "3",
                                       "--out", str(tmp_path / "x")], "--ep 3 must divide")


def test_batches_of_different_ranks_are_disjoint_shards():
    from minimoe.data import BuiltinData
    from minimoe.tokenizers import ImageTokenizer, Vocab
    from minimoe.batches import Batcher
    from minimoe.vq import VQModel
    from conftest import micro_config
    cfg = micro_config()
    tok = ImageTokenizer(VQModel(cfg.vq), cfg.vq)
    source = BuiltinData(16, ("shapes",), "train", 0)
    alone = Batcher(cfg, source, Vocab(16), tok)
    ranks = [Batcher(cfg, source, Vocab(16), tok, rank=r, world=2) for r in range(2)]
    # two ranks at step s read what one process reads at steps 2s and 2s + 1
    for r in range(2):
        assert torch.equal(ranks[r](3).tokens_BL, alone(6 + r).tokens_BL)
    assert not torch.equal(ranks[0](3).tokens_BL, ranks[1](3).tokens_BL)


@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_resumes_like_it(tmp_path):
    """--fsdp true (every weight, gradient and AdamW state sharded over the 2 ranks) gives the
    same losses and gradient norms as DDP through the dense and MoE stages, and after a resume
    (the checkpoint holds the whole model and is cut back into shards)."""
    import shutil
    from test_scripts import MICRO
    seed_run = tmp_path / "seed"  # one tokenizer for both runs (VQ training is not bitwise
    train_alone(MICRO + ["--dense-steps", "1", "--out", str(seed_run)])  # reproducible)
    flags = MICRO + ["--dense-steps", "3", "--moe", "random", "--num-experts", "4",
                     "--optimizer", "adamw"]  # FSDP shards Muon's matrices
    for name, extra in (("fsdp", ["--fsdp", "true"]), ("ddp", [])):
        (tmp_path / name).mkdir()
        shutil.copy(seed_run / "vq.pt", tmp_path / name / "vq.pt")
        torchrun(flags + extra + ["--moe-steps", "3", "--out", str(tmp_path / name)])
        torchrun(flags + extra + ["--moe-steps", "5", "--resume", "--out", str(tmp_path / name)])
    fsdp, ddp = moe_losses(tmp_path / "fsdp"), moe_losses(tmp_path / "ddp")
    assert len(fsdp) == 10 and max(abs(a - b) for a, b in zip(fsdp, ddp)) < 1e-4, (fsdp, ddp)


@pytest.mark.slow
def test_a_dying_rank_stops_the_run_with_a_message_and_keeps_the_checkpoint(tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time
    from minimoe import checkpoint
    from test_scripts import MICRO
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                            "2", "--master_port", str(port), str(ROOT / "train.py"), *MICRO,
                            "--dense-steps", "100000", "--out", str(out)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and
                                          log.read_text().count('"dense"') >= 8):
        time.sleep(0.5)
    ranks = subprocess.run(["pgrep", "-f", f"train.py.*{out}"], capture_output=True,
                           text=True).stdout.split()
    os.kill(max(int(pid) for pid in ranks), signal.SIGKILL)  # the newest process: rank 1
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0
    assert "stopped because another rank failed" in err
    assert checkpoint.load(out / "ckpt.pt")["step"] > 0, "the last checkpoint is whole"
