"""No false success: every registered method, with its defaults, on problems whose optimum is
known either reports success=False or ends within 1e-2 (relative) of x*."""
import pytest
from test_verify_upper import duopoly

from bilevel import SOLVERS, solve


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_success_only_near_the_known_optimum(name):
    """Stackelberg duopoly (test_verify_upper.duopoly): the follower free (K = 100, x* = 5) and
    capped by its box (K = 2, x* = 4, y* = 2)."""
    for K, x_star in ((100.0, 5.0), (2.0, 4.0)):
        r = solve(duopoly(K), name, log_every=1000, kkt="none", seed=0)
        error = abs(float(r.x[0]) - x_star) / x_star
        assert not r.success or error <= 1e-2, (K, float(r.x[0]), r.verification)
        if not r.success:
            assert r.message and (r.verification is None or r.verification["reason"])
