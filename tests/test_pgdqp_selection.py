"""pgdqp's default (schedule="projected") on lower levels with several solutions: the optimistic
selection (of the lower-level solutions at x, the one best for f) and the active bounds of boxes,
on problems built here whose optima are known in closed form."""
import pytest
import torch

from bilevel import Autograd, BilevelProblem, Oracle, solve
from bilevel.solvers import PGDQP
from bilevel.solvers.pgdqp import free_coordinates, optimistic_choice

D = torch.float64


def two_branches() -> BilevelProblem:
    """g = ((y - x)^2 - 1)^2 on y in [-4, 4]: two global lower-level solutions y = x - 1 and y = x + 1
    (g = 0 at both); f = (x - 1)^2 + (y - 3)^2, x in [-3, 3].

    Optimistic optimum: on the branch y = x + 1, F = (x - 1)^2 + (x - 2)^2 is least at x* = 3/2
    (F* = 1/2, y* = 5/2); on y = x - 1, F = (x - 1)^2 + (x - 4)^2 >= 9/2 (at x = 5/2). The start
    y0 = -1.5 lies in the basin of the worse branch, which the Newton step alone would follow."""
    return BilevelProblem(f=lambda x, y: ((x - 1) ** 2).sum() + ((y - 3) ** 2).sum(),
                          g=lambda x, y: ((((y - x) ** 2) - 1) ** 2).sum(),
                          x0=torch.zeros(1, dtype=D), y0=torch.full((1,), -1.5, dtype=D),
                          x_bounds=(-3.0, 3.0), y_bounds=(-4.0, 4.0))


def test_the_optimistic_lower_level_solution_is_selected():
    result = solve(two_branches(), "pgdqp", max_iter=1500, log_every=500)
    assert abs(float(result.x[0]) - 1.5) <= 1e-6
    assert abs(float(result.y[0]) - 2.5) <= 1e-6


def test_a_candidate_with_a_higher_lower_level_value_is_not_selected():
    problem = two_branches()
    oracle = Oracle(Autograd(problem.f, problem.g))
    x, y = torch.zeros(1, dtype=D), torch.full((1,), -1.0, dtype=D)          # g = 0, f = 17
    better = torch.full((1,), 1.0, dtype=D)                                   # g = 0, f = 5
    worse_lower = torch.full((1,), 2.0, dtype=D)                              # g = 9, f = 2
    ends = [worse_lower, better]
    lower = [float(problem.g(x, end)) for end in ends]
    assert torch.equal(optimistic_choice(oracle, x, y, 0.0, ends, lower, 1e-6, 1e-3), better)
    assert optimistic_choice(oracle, x, y, 0.0, ends[:1], lower[:1], 1e-6, 1e-3) is None


def test_an_interior_coordinate_whose_unit_step_crosses_the_bound_stays_free():
    """g = (x - y1)^2 + y2^2 on y >= 0, f = -x + 2 y1 + y2, x free, from x0 = 1, y0 = (1, 1). The lower level
    is strongly convex, y(x) = (max(x, 0), 0), so F(x) = |x|: x* = 0, y* = (0, 0). At y2 = 1 (inside the box)
    grad_y2 g = 2 and the unit step y2 - 2 leaves the box, which a unit-step test of the bound holds: y2 then
    never reaches its lower-level solution 0."""
    problem = BilevelProblem(f=lambda x, y: (-x + 2 * y[0] + y[1]).sum(),
                             g=lambda x, y: ((x - y[0]) ** 2 + y[1] ** 2).sum(),
                             x0=torch.ones(1, dtype=D), y0=torch.ones(2, dtype=D), y_bounds=(0.0, None))
    result = solve(problem, "pgdqp", max_iter=2000, log_every=1000, verify=False)
    assert abs(float(result.x[0])) <= 1e-6
    assert float(result.y.abs().max()) <= 1e-6


def test_free_coordinates_hold_only_those_pushed_against_their_bound():
    t = torch.tensor([0.0, 0.0, 0.1, 1.0, 1.0], dtype=D)
    slope = torch.tensor([1.0, -1.0, 5.0, -1.0, 3.0], dtype=D)      # the step is -slope
    free = free_coordinates(t, slope, (0.0, 1.0))
    assert free.tolist() == [False, True, True, False, True]
    assert free_coordinates(t, slope, None) is None
    assert free_coordinates(t, slope, (None, 1.0)).tolist() == [True, True, True, False, True]


@pytest.mark.parametrize("value", [-1e-6, float("nan"), "tight"])
def test_select_tol_is_checked(value):
    with pytest.raises(ValueError, match=rf"Invalid select_tol: {value!r}"):
        PGDQP(select_tol=value)
