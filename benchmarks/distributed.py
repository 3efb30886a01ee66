"""Speed-up of data-parallel pgdqp runs with 1, 2, 4, ... processes (gloo on CPU, NCCL on GPUs).

    python benchmarks/distributed.py --procs 1,2,4 --max-iter 40
    python benchmarks/distributed.py --procs 1,2 --device cuda     # one GPU per process

Each configuration is launched with torchrun on the toy-cleaning problem (sharded over
the processes, every process with OMP_NUM_THREADS=--threads, default 1) and reports the seconds per outer
iteration of solve (time column of the history: set-up and metrics excluded) and the
speed-up over one process. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, SRC)
    import bilevel
    from bilevel import distributed

    rank, world, device = distributed.init_from_env(args.device)
    problem = bilevel.PROBLEMS["toy-cleaning"](n_train=args.n_train, n_val=args.n_val, n_test=100, dim=args.dim,
                                              classes=args.classes, rank=rank, world_size=world, device=device)
    options = dict(schedule="constant", step_size=0.5, alpha=1.0)  # no set-up products: time the steps only
    bilevel.solve(problem, "pgdqp", max_iter=3, distributed=True, options=options)  # warm-up
    result = bilevel.solve(problem, "pgdqp", max_iter=args.max_iter, log_every=args.max_iter, distributed=True, options=options)
    if rank == 0:
        seconds = result.history["time"][-1] / args.max_iter
        print("RESULT " + json.dumps({"procs": world, "s_per_iter": seconds, "f": result.history["f"][-1]}))
    distributed.shutdown()


def launch(procs: int, args: argparse.Namespace) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
               "--master-addr", "127.0.0.1", "--master-port", str(port), __file__, "--worker",
               "--max-iter", str(args.max_iter), "--n-train", str(args.n_train), "--n-val", str(args.n_val),
               "--dim", str(args.dim), "--classes", str(args.classes)] + (["--device", args.device] if args.device else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{procs} processes failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2,4", help="comma-separated process counts (default 1,2,4)")
    parser.add_argument("--max-iter", type=int, default=40, help="timed iterations (default 40)")
    parser.add_argument("--n-train", type=int, default=40000, help="training samples (default 40000)")
    parser.add_argument("--n-val", type=int, default=20000, help="validation samples (default 20000)")
    parser.add_argument("--dim", type=int, default=100, help="features (default 100)")
    parser.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process (default 1)")
    parser.add_argument("--device", default=None, help="cuda for one GPU per process (default cpu)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = [launch(int(p), args) for p in args.procs.split(",")]
    base = rows[0]["s_per_iter"] if rows[0]["procs"] == 1 else None  # speed-ups need the 1-process row first
    print(f"toy-cleaning n_train={args.n_train} n_val={args.n_val} dim={args.dim} classes={args.classes}, "
          f"pgdqp, {args.max_iter} iterations, device={args.device or 'cpu'}, {args.threads} thread(s) per process")
    print("| processes | s / iteration | speed-up | final f |\n|---|---|---|---|")
    for row in rows:
        speedup = f"{base / row['s_per_iter']:.2f}" if base else "-"
        print(f"| {row['procs']} | {row['s_per_iter']:.4f} | {speedup} | {row['f']:.6f} |")


if __name__ == "__main__":
    main()
