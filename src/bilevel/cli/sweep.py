"""Sweeps: run many `RunSpec`s by local processes or a Dask cluster (one code path per run),
each written atomically into the result layout (bilevel.cli.store) and recorded in the
manifest as it finishes, so that a killed sweep resumes without loss or duplicates.
`bilevel run` and `compare` go through `run_specs` too, in this process."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

from . import runner, store
from .config import ConfigError, RunSpec, expand

Run = Callable[[RunSpec, str], dict[str, Any]]


def make_dir(path: str | Path, flag: str, purpose: str) -> Path:
    """Create the directory `path` (and its parents); an error naming `flag` where it is a
    file, cannot be created or is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"Invalid {flag}: {str(path)!r} is a file (expected a directory {purpose})")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Invalid {flag}: {str(path)!r} cannot be created ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"Invalid {flag}: {str(path)!r} is not writable")
    return path


def prepare_out(out: str | Path, specs: list[RunSpec], resume: bool) -> list[RunSpec]:
    """Create OUT (an error names --out if it cannot be) and return the specs not yet finished
    there. Without resume, OUT must hold no finished run of these specs."""
    out = Path(out)
    done = store.finished_ids(out) & {s.run_id for s in specs}
    if done and not resume:
        raise ConfigError(f"Invalid --out: {str(out)!r} already holds {len(done)} finished runs of this "
                          f"configuration (use --resume to continue, or another directory)")
    make_dir(out, "--out", "for the results")
    recorded = {r["run_id"] for r in store.read_manifest(out) if r.get("status") == "finished"}
    for spec in specs:                       # killed between the summary's rename and its manifest line
        if spec.run_id in done - recorded:
            store.append_manifest(out, {**spec.describe(), "status": "finished", "recovered": True})
    return [s for s in specs if s.run_id not in done]


def run_specs(specs: list[RunSpec], out: str | Path, *, jobs: int = 1, scheduler: str | None = None,
              dask_workers: int | None = None, progress: bool = True, run: Run | None = None,
              total: int | None = None) -> list[dict[str, Any]]:
    """Run `specs` (already filtered by `prepare_out`) into OUT, appending each record to the
    manifest as it finishes; returns the records. A failed run is recorded and the others go on."""
    from tqdm.auto import tqdm
    total = len(specs) if total is None else total
    counts = {"finished": total - len(specs), "failed": 0, "running": 0}
    bar = tqdm(total=total, initial=counts["finished"], disable=not progress, desc="runs")
    records = []
    for record in execute(specs, str(out), jobs, scheduler, dask_workers, counts, run):
        store.append_manifest(out, record)
        counts["finished" if record["status"] == "finished" else "failed"] += 1
        bar.update(1)
        bar.set_postfix(counts, refresh=True)
        records.append(record)
    bar.close()
    return records


def run_sweep(config: dict[str, Any], out: str | Path, *, jobs: int = 1, scheduler: str | None = None,
              dask_workers: int | None = None, resume: bool = False, progress: bool = True,
              log_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Run every spec of a checked config not yet finished in OUT; returns the new manifest records.

    Args:
        jobs: local worker processes (1: in this process).
        scheduler: address of a running Dask scheduler (e.g. "tcp://10.0.0.5:8786").
        dask_workers: start a local Dask cluster with this many worker processes.
        resume: skip runs already finished in OUT (without it, OUT must hold none of them).
        log_dir: each run's rows live into LOG_DIR/<run_id>.jsonl (and TensorBoard events),
            `runner.live_log`; on a cluster a directory every worker sees.
    """
    specs = expand(config)
    if log_dir is not None:
        make_dir(log_dir, "--log-dir", "for the live logs")
    todo = prepare_out(out, specs, resume)
    (Path(out) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = functools.partial(runner.run, log_dir=str(log_dir)) if log_dir is not None else None
    return run_specs(todo, out, jobs=jobs, scheduler=scheduler, dask_workers=dask_workers, progress=progress,
                     total=len(specs), run=run)


def execute(specs: list[RunSpec], out: str, jobs: int, scheduler: str | None, dask_workers: int | None,
            counts: dict[str, int], run: Run | None = None):
    """Yield records as runs finish, from the chosen executor (one code path per run).

    `counts["running"]` is kept at min(free slots, runs outstanding). A run whose worker
    dies (killed, out of memory) yields a failed record instead of stopping the sweep.
    `run(spec, out) -> record` is what the workers execute (default `runner.run`).
    """
    run = run or runner.run
    if scheduler or dask_workers:
        from dask.distributed import Client, LocalCluster, as_completed
        cluster = None
        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
            client = Client(cluster)
            client.run(torch.set_num_threads, threads_per_worker(dask_workers))
        try:
            slots = max(sum(client.nthreads().values()), 1)
            futures = {client.submit(run, spec, out, pure=False, key=f"run-{spec.run_id}"): spec
                       for spec in specs}
            yield from _collect(futures, as_completed(futures), slots, counts)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif jobs > 1:
        import concurrent.futures
        import multiprocessing
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=torch.set_num_threads,
                                                    initargs=(threads_per_worker(jobs),)) as pool:
            futures = {pool.submit(run, spec, out): spec for spec in specs}
            yield from _collect(futures, concurrent.futures.as_completed(futures), jobs, counts)
    else:
        for i, spec in enumerate(specs):
            counts["running"] = 1
            record = run(spec, out)
            counts["running"] = min(1, len(specs) - i - 1)
            yield record


def threads_per_worker(workers: int) -> int:
    """torch's intra-op threads for each of `workers` processes on this machine: its cores
    shared out (at least 1). Each process would otherwise start a thread per core, and the
    oversubscribed threads spin against each other (measured with -j 2 on 2 cores: stretches
    of 180 ms per pgdqp iteration on hyper-cleaning PCA 82 where a lone run takes 5 ms)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _collect(futures: dict, finished: Iterable, slots: int, counts: dict[str, int]):
    """Records of futures in the order they finish; an executor error becomes a failed record."""
    outstanding = len(futures)
    counts["running"] = min(slots, outstanding)
    for future in finished:
        try:
            record = future.result()
        except Exception as exc:  # the worker died or the pool broke: the run failed, the sweep goes on
            record = {**futures[future].describe(), "status": "failed",
                      "error": f"{type(exc).__name__}: {exc} (the worker running it stopped; "
                               f"`--resume` runs it again)"}
        outstanding -= 1
        counts["running"] = min(slots, outstanding)
        yield record
