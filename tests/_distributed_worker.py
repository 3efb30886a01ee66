"""One rank of the data-parallel tests (launched by tests/test_distributed.py, gloo on CPU).

    python _distributed_worker.py compare OUT_DIR MAX_ITER   save oracle outputs and every solver's run
    python _distributed_worker.py die|stop                    rank 1 kills or stops itself mid-run (CLI path)

Rank, world size and the rendezvous come from the environment, as torchrun sets them.
"""
import os
import signal
import sys

import torch
import torch.distributed as dist

import bilevel
from bilevel import distributed
from bilevel.cli import main as cli
from bilevel.core.data import shard_range
from bilevel.core.distributed import Reduced
from bilevel.core.oracles import Autograd, Oracle

PROBLEM_ARGS = dict(n_train=37, n_val=23, n_test=50, dim=4, classes=3, seed=3)
HYPER_CLEANING_ARGS = dict(n_train=101, n_val=51, n_test=50, pca=8, hidden=6, retrain_steps=5, dtype=torch.float64)


def point(problem, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(problem.x0.shape, generator=gen, dtype=torch.float64)
    y = torch.randn(problem.y0.shape, generator=gen, dtype=torch.float64)
    vx = torch.randn(problem.x0.shape, generator=gen, dtype=torch.float64)
    vy = torch.randn(problem.y0.shape, generator=gen, dtype=torch.float64)
    return x, y, vx, vy


def oracle_outputs(oracle, problem):
    """Every oracle method at one point, as a dict name -> tuple of tensors, and the counts."""
    x, y, vx, vy = point(problem)
    out = {
        "f": (oracle.f(x, y),), "g": (oracle.g(x, y),), "grad_f": oracle.grad_f(x, y),
        "grad_g": oracle.grad_g(x, y), "grad_g_y": (oracle.grad_g_y(x, y),), "grad_g_x": (oracle.grad_g_x(x, y),),
        "h_and_grad": oracle.h_and_grad(x, y), "vjp_grad_y_g": oracle.vjp_grad_y_g(x, y, vy),
        "jvp_grad_y_g": (oracle.jvp_grad_y_g(x, y, vx, vy),), "hvp_f": oracle.hvp_f(x, y, vx, vy),
        "hvp_h": oracle.hvp_h(x, y, vx, vy), "hvp_inner_grad_y_g": oracle.hvp_inner_grad_y_g(x, y, vy, vx, vy),
    }
    return out, oracle.snapshot()




def runs(problem, max_iter, distributed):
    """Every registered solver that runs data-parallel: (x, y, history) after max_iter steps."""
    out = {}
    for name, cls in sorted(bilevel.SOLVERS.items()):
        if cls.supports_distributed:
            r = bilevel.solve(problem, name, max_iter=max_iter, log_every=5, seed=1, distributed=distributed)
            out[name] = (r.x, r.y, r.history, r.status.name)
    return out


def hyper_cleaning_runs(max_iter, rank=0, world_size=1):
    """pgdqp on hyper-cleaning (embedded MNIST sample, linear and MLP): (x, y, history) per model."""
    out = {}
    for model in ("linear", "mlp"):
        problem = bilevel.PROBLEMS["hyper-cleaning"](model=model, rank=rank, world_size=world_size,
                                                     **HYPER_CLEANING_ARGS)
        r = bilevel.solve(problem, "pgdqp", max_iter=max_iter, log_every=max_iter, seed=1,
                          distributed=world_size > 1)
        out[model] = (r.x, r.y, r.history, r.status.name)
    return out


MINIBATCH_METHODS = ("pgdqp", "soba", "saba", "stocbio", "f2sa")


def sharded_biased_ridge(rank=0, world_size=1):
    """biased-ridge (a finite sum at both levels) with this rank's block of each level's samples."""
    full = bilevel.PROBLEMS["biased-ridge"](seed=2, n_train=101, n_val=53, dim=6)
    blocks = [tuple(t[shard_range(data.size, rank, world_size)] for t in data.value)
              for data in (full.upper_data, full.lower_data)]
    return bilevel.BilevelProblem(*full.batched, full.x0, full.y0, upper_data=blocks[0], lower_data=blocks[1])


def minibatch_runs(max_iter, rank=0, world_size=1):
    """The stochastic methods at batch size 16 on (sharded) biased-ridge: (x, y, history, status);
    pgdqp's x waits 3 steps, not its default 50, so that x moves within the short runs."""
    problem, out = sharded_biased_ridge(rank, world_size), {}
    for name in MINIBATCH_METHODS:
        r = bilevel.solve(problem, name, options={"x_wait": 3} if name == "pgdqp" else None, max_iter=max_iter,
                          log_every=5, seed=1, batch_size=16, distributed=world_size > 1)
        out[name] = (r.x, r.y, r.history, r.status.name, r.verification["upper_value"])
    return out


def compare(out_dir, max_iter):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    problem = bilevel.PROBLEMS["toy-cleaning"](rank=rank, world_size=world, **PROBLEM_ARGS)
    oracles, counts = oracle_outputs(Oracle(Reduced(Autograd(problem.f, problem.g))), problem)
    torch.save({"oracles": oracles, "counts": counts, "runs": runs(problem, max_iter, True),
                "hyper_cleaning": hyper_cleaning_runs(max_iter, rank, world),
                "minibatch": minibatch_runs(max_iter, rank, world)},
               os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.shutdown()  # a barrier first: a rank that tears down early aborts at exit


def failing(mode):
    """A toy-cleaning problem whose rank 1 kills (die) or stops (stop) itself at its 20th g evaluation."""
    def build(seed=0, rank=0, world_size=1):
        problem = bilevel.PROBLEMS["toy-cleaning"](seed=seed, rank=rank, world_size=world_size, **{
            k: v for k, v in PROBLEM_ARGS.items() if k != "seed"})
        calls = [0]

        def g(x, y):
            calls[0] += 1
            if rank == 1 and calls[0] == 20:
                os.kill(os.getpid(), signal.SIGKILL if mode == "die" else signal.SIGSTOP)
            return problem.g(x, y)
        return bilevel.BilevelProblem(problem.f, g, problem.x0, problem.y0)
    return build


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "compare":
        compare(sys.argv[2], int(sys.argv[3]))
    else:
        bilevel.PROBLEMS["failing"] = failing(mode)
        sys.exit(cli.main(["run", "--problem", "failing", "--method", "sgf", "--max-iter", "1000", "--no-progress",
                           "--distributed", "--dist-timeout", "5"]))
