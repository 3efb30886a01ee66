"""Run functions for tests/test_harness.py, importable by spawned workers: one whose worker
process dies on seed 0 (as an out-of-memory kill would) and writes its run normally otherwise,
and one that reports the worker's thread count."""
import os

from bilevel.cli.runner import run


def die_on_seed_zero(spec, out):
    if spec.seed == 0:
        os._exit(1)
    return run(spec, out)


def report_threads(spec, out):
    """The worker's torch intra-op thread count, in place of a run."""
    import torch
    return {**spec.describe(), "status": "finished", "threads": torch.get_num_threads()}
