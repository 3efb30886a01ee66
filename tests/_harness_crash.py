"""A run function for tests/test_harness.py whose worker process dies on seed 0 (as an
out-of-memory kill would), and writes its run normally otherwise."""
import os

from bilevel.bench.sweep import run_and_write


def die_on_seed_zero(spec, out):
    if spec.seed == 0:
        os._exit(1)
    return run_and_write(spec, out)
