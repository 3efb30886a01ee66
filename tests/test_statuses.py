"""A run's status and success say the truth on hard problems: a solution on the y box (where h
is the projected residual), iterates that run away (RUNAWAY, never a success), and an optimistic
answer the verification must not call a success."""
import math

import pytest
import torch

import bilevel
from bilevel import BilevelProblem, Status

pytestmark = pytest.mark.filterwarnings("ignore:f\\(x0, y0\\) does not depend on y")
D = torch.float64
DETERMINISTIC = ["pgdqp", "sgf", "bome", "aid_bio", "vpbgd", "galet", "iaptt_gm", "meha", "f2ba", "hjfbio"]


def y_bound_problem() -> BilevelProblem:
    """f = x, g = x y, x in [-1, 1], y in [0, 1]. For x < 0 the lower level's minimiser is
    y = 1 (on the bound, where grad_y g = x != 0), so every x is feasible and x* = -1, F* = -1."""
    return BilevelProblem(lambda x, y: x[0], lambda x, y: x[0] * y[0],
                          torch.tensor([0.5], dtype=D), torch.tensor([0.5], dtype=D),
                          x_bounds=(-1.0, 1.0), y_bounds=(0.0, 1.0), name="y-bound")


def runaway_problem() -> BilevelProblem:
    """g = 1/2 (y1 - max(x, 0))^2 + 1/2 y2^2 has y*(x) = (max(x, 0), 0); f = (y1 - 1)^2 + (x - 1)^2 / 10
    is smallest at x* = 1 (y1 = 1). For x < 0 the lower level no longer depends on x: a method
    that drifts there can run to -infinity with grad_x F = (x - 1) / 5 pulling it back only weakly."""
    def f(x, y):
        return (y[0] - 1) ** 2 + (x[0] - 1) ** 2 / 10

    def g(x, y):
        return 0.5 * (y[0] - torch.clamp(x[0], min=0)) ** 2 + 0.5 * y[1] ** 2

    return BilevelProblem(f, g, torch.tensor([-1.0], dtype=D), torch.tensor([0.0, 0.0], dtype=D), name="runaway")


def test_the_y_bound_problem_is_what_its_docstring_says():
    p = y_bound_problem()
    for x in (-1.0, -0.3):
        ys = torch.linspace(0, 1, 101, dtype=D)
        values = torch.stack([p.g(torch.tensor([x], dtype=D), y.reshape(1)) for y in ys])
        assert float(ys[values.argmin()]) == 1.0


def test_the_lower_residual_on_a_y_bound_is_the_projected_gradient():
    p = y_bound_problem()
    x, y = torch.tensor([-0.5], dtype=D), torch.tensor([1.0], dtype=D)
    gradient = torch.tensor([-0.5], dtype=D)            # grad_y g = x, pushing y outward at y = 1
    assert float(p.lower_residual(y, gradient).abs().max()) == 0.0
    assert float(p.lower_residual(torch.tensor([0.5], dtype=D), gradient).abs().max()) == pytest.approx(0.5)
    # the logged h of a run starting at the bound's solution is that residual's square: zero
    start = BilevelProblem(p.f, p.g, x, y, x_bounds=(-1.0, 1.0), y_bounds=(0.0, 1.0))
    r = bilevel.solve(start, "bome", max_iter=1, log_every=1, kkt="none", verify=False)
    assert r.history["h"][0] == 0.0 and r.history["kkt_feasibility"][0] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pgdqp", "bome", "aid_bio", "galet", "hjfbio", "iaptt_gm", "f2ba", "vpbgd"])
def test_methods_find_the_solution_on_the_y_bound(method):
    p = y_bound_problem()
    r = bilevel.solve(p, method, max_iter=3000, log_every=3000, kkt="none", seed=0)
    assert float(r.x[0]) == pytest.approx(-1.0, abs=1e-2)
    assert 0.0 <= float(r.y[0]) <= 1.0
    assert float(r.y[0]) == pytest.approx(1.0, abs=1e-2)
    assert r.verification["y_distance"] <= 1e-2 and r.success


@pytest.mark.slow
@pytest.mark.parametrize("method", DETERMINISTIC)
def test_a_run_that_runs_away_never_reports_success(method):
    """Whatever a method does on the runaway problem (x* = 1), a run whose x grew past 100 ends
    RUNAWAY (or DIVERGED) and never reports success; a success is a point whose y solves the
    lower level (y1 = max(x, 0), y2 = 0)."""
    p = runaway_problem()
    r = bilevel.solve(p, method, max_iter=2000, log_every=100, kkt="none", seed=0)
    x = float(r.x[0])
    assert math.isfinite(x)
    if abs(x) > 100:
        assert not r.success and r.status in (Status.RUNAWAY, Status.DIVERGED), (r.status, x)
    if r.success:
        assert float(r.y[0]) == pytest.approx(max(x, 0.0), abs=1e-2) and abs(float(r.y[1])) <= 1e-2


def test_runaway_status_is_reported_for_growing_iterates():
    """A direct test of the detector: a solver whose iterates double every step."""
    from bilevel.core.state import Aux, State
    from bilevel.solvers.base import Solver

    class Doubling(Solver):
        name = "doubling"

        def init(self, problem, oracle, *, max_iter, generator):
            return State(problem.x0, problem.y0)

        def step(self, problem, oracle, state):
            info = {"f": problem.f(state.x, state.y), "g": problem.g(state.x, state.y), "h": 0.0,
                    "kkt_feasibility": 0.0}
            return State(2 * state.x, state.y, state.k + 1), Aux(info)

    p = BilevelProblem(lambda x, y: x.sum(), lambda x, y: ((y - x) ** 2).sum(), torch.ones(1, dtype=D),
                       torch.ones(1, dtype=D))
    r = bilevel.solve(p, Doubling(), max_iter=200, log_every=10, kkt="none", verify=False)
    assert r.status is Status.RUNAWAY and not r.success
    assert math.isfinite(float(r.x[0]))


@pytest.mark.slow
def test_an_optimistic_run_is_not_a_success_and_its_verified_value_is_honest():
    """pgdqp with a large constant step and a small lower step on per-feature weight decay
    (breast cancer) holds a y far from y*(x): f at that y is optimistic. The verification
    re-solves y at the final x; its upper value must match scikit-learn's logistic regression
    fitted at the same weights (per-feature weights as a rescaling of the features), and the run
    must not be called a success."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from bilevel.problems.hpo import feature_weight_decay

    problem = feature_weight_decay(seed=0, honest_metric=False)
    r = bilevel.solve(problem, "pgdqp", max_iter=2000, log_every=2000, kkt="none", seed=0,
                      options={"schedule": "constant", "step_size": 100.0, "lower_step_size": 0.1})
    (a_tr, t_tr), (a_val, t_val) = problem.info["_data"]["train"], problem.info["_data"]["val"]
    scale = torch.exp(-0.5 * r.x)                       # W_j exp(x_j / 2) = w'_j on features a_j exp(-x_j / 2)
    model = LogisticRegression(C=1.0 / len(t_tr), tol=1e-12, max_iter=100000)
    model.fit((a_tr * scale).numpy(), t_tr.numpy())
    honest = log_loss(t_val.numpy(), model.predict_proba((a_val * scale).numpy())[:, 1])
    assert r.verification["upper_value"] == pytest.approx(honest, abs=1e-3)
    optimistic = float(problem.f(r.x, r.y))
    assert optimistic < honest - 1e-2                 # (measured 0.040 against 0.088)
    assert not r.success and r.verification["y_distance"] > 1e-2 and "verification failed" in r.message
