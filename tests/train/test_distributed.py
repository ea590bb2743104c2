"""Two processes (gloo, CPU) train and evaluate exactly like one: global-batch loss, gradients, shards, recall."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from cli_args import fit_args, job_args

from clip_lab.__main__ import main
from clip_lab.data.sampling import PairBatchSampler
from clip_lab.models.loss import InfoNCE

WORLD, PER_RANK, DIM = 2, 4, 8


def cli_in_a_subprocess(args):
    """`python -m clip_lab *args` in a subprocess that imports this checkout; it must succeed."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    done = subprocess.run(
        [sys.executable, "-m", "clip_lab", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * PER_RANK, DIM, generator=g)
    text = F.normalize(torch.randn(WORLD * PER_RANK, 4, generator=g), dim=1)
    return x, text


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(DIM, 4)


def step(net, x, text, gather=lambda t: t):
    loss, acc = InfoNCE()(gather(F.normalize(net(x), dim=1)), gather(text), torch.tensor(10.0))
    loss.backward()
    return loss.detach(), acc


def _rank(rank, folder):
    import torch.distributed as dist

    from clip_lab.train.distributed import gather_with_grad

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    x, text = data()
    net = model()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    loss, acc = step(net, x[mine], text[mine], gather_with_grad)
    for p in net.parameters():  # what DDP does with the gradients: the mean over ranks
        dist.all_reduce(p.grad)
        p.grad /= WORLD
    torch.save({"loss": loss, "acc": acc, "grads": [p.grad for p in net.parameters()]}, f"{folder}/rank{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other still talks to it (that aborts the other)
    dist.destroy_process_group()


def test_two_processes_compute_the_loss_and_gradients_of_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=WORLD, join=True)
    x, text = data()
    net = model()
    loss, acc = step(net, x, text)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], loss, atol=1e-6) and torch.allclose(got["acc"], acc)
        for g, p in zip(got["grads"], net.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-6)
    local = InfoNCE()(F.normalize(model()(x[:PER_RANK]), dim=1), text[:PER_RANK], torch.tensor(10.0))[0]
    assert not torch.allclose(local, loss)  # a per-rank loss would differ: the gather matters


def test_ranks_split_each_global_batch_and_see_every_image_once_per_epoch():
    start = np.concatenate([[0], np.cumsum(np.random.default_rng(0).integers(1, 6, size=50))])
    one = list(PairBatchSampler(start, batch_size=8, pairs="image", drop_last=True, seed=3))
    ranks = [
        PairBatchSampler(start, batch_size=4, pairs="image", drop_last=True, seed=3, rank=r, world_size=2)
        for r in range(2)
    ]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(one) == len(ranks[0]) == 50 // 8
    for global_batch, a, b in zip(one, *shards):
        assert a + b == global_batch  # rank 0 the first half, rank 1 the second: the same global batches
    images = [i for s in shards for batch in s for i, _ in batch]
    assert len(images) == len(set(images)) == 48
    evaluation = [PairBatchSampler(start, 7, "first", shuffle=False, rank=r, world_size=2) for r in range(2)]
    seen = sorted(i for s in evaluation for batch in s for i, _ in batch)
    assert seen == list(range(50))


def test_two_process_test_gives_the_recall_of_one_process(trained_run, tmp_path):
    test = job_args("test", trained_run, "best.ckpt", trainer__accelerator="cpu", results_dir=tmp_path)
    assert main([*test, "--run", "one"]) == 0  # one CPU process: the reference, whatever device trained the model
    cli_in_a_subprocess([*test, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--run", "ddp"])
    two = json.loads((tmp_path / "ddp" / "test_metrics.json").read_text())["metrics"]
    one = json.loads((tmp_path / "one" / "test_metrics.json").read_text())["metrics"]
    assert two["n_images"] == one["n_images"] == 96 and two["n_captions"] == one["n_captions"]
    for key in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@10", "rsum", "i2t_MRR"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


@pytest.mark.slow
def test_two_process_fit_runs_end_to_end_with_one_writer(demo_root, tmp_path):
    cli_in_a_subprocess(
        fit_args(
            demo_root,
            tmp_path,
            "ddp",
            "ddp.yaml",
            trainer__accelerator="cpu",
            trainer__max_epochs=1,
            data__batch_size=16,
            data__val_images=48,
        )
    )
    run = tmp_path / "results" / "ddp"
    stats = json.loads((run / "run_stats.json").read_text())
    assert stats["hardware"]["devices"] == 2
    assert stats["epochs"][0]["train_images"] == 256 // 32 * 32  # 8 global batches of 2 x 16 pairs
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
