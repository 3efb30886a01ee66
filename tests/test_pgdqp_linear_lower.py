"""pgdqp ("projected") where the lower level is linear in y on a box: its solution sits on the bound
that g's slope points to, and where f holds y on the other bound only x can make y a lower-level
solution (`restored_through_x`). Problems built here, with optima found by enumeration: a linear
lower level on a box is solved at a vertex, so F(x) = min over the optimal vertices of f."""
import pytest
import torch

from bilevel import BilevelProblem, solve, solve_batch
from bilevel.solvers.pgdqp import restored_through_x

D = torch.float64


def kink(scale: float, x0: float, weight: float = 2.0) -> BilevelProblem:
    """f = (x - 1/2)^2 + weight y, g = scale (x - 1) y, x in [0, 3], y in [0, 1]. y*(x) = 1 for x < 1
    (F = (x - 1/2)^2 + weight, least at x = 1/2), 0 for x > 1 (F = (x - 1/2)^2), every y at x = 1
    (optimistic y = 0). weight = 2: F* = 1/4 at x* = 1, y* = 0, the kink of F (x = 1/2 a local
    solution, F = 2); weight = 1/10: F* = 1/10 at x* = 1/2, y* = 1 (the kink a local solution, F = 1/4)."""
    return BilevelProblem(lambda x, y: (x[0] - 0.5) ** 2 + weight * y[0], lambda x, y: scale * (x[0] - 1) * y[0],
                          torch.tensor([x0], dtype=D), torch.tensor([0.0], dtype=D),
                          x_bounds=(0.0, 3.0), y_bounds=(0.0, 1.0), name="kink")


def hyper_value(x: float, weight: float = 2.0) -> float:
    """F(x) by enumerating the vertices y = 0, 1 of the lower level's box (optimistic at ties)."""
    values = {y: (x - 1) * y for y in (0.0, 1.0)}
    best = min(values.values())
    return min((x - 0.5) ** 2 + weight * y for y, v in values.items() if v == best)


@pytest.mark.parametrize("weight, x_star, F_star", [(2.0, 1.0, 0.25), (0.1, 0.5, 0.1)])
def test_the_kink_problem_is_what_its_docstring_says(weight, x_star, F_star):
    grid = [i / 1000 for i in range(3001)]
    values = [hyper_value(x, weight) for x in grid]
    assert min(values) == pytest.approx(F_star, abs=1e-12) and grid[values.index(min(values))] == x_star
    assert hyper_value(0.5, weight) == weight and hyper_value(1.0, weight) == 0.25


@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("x0", [2.5, 0.2])
def test_f_holding_y_on_a_bound_is_restored_through_x(scale, x0):
    """From x0 = 0.2 (y = 0 infeasible: its solution is y = 1) and from x0 = 2.5 (x descending f
    across the kink), x moves to the kink, where y = 0 is a solution (F* = 1/4), rather than y to
    its solution y = 1, which costs f 2 (the local solution x = 1/2 there, F = 2)."""
    result = solve(kink(scale, x0), "pgdqp", max_iter=300, log_every=300, seed=0)
    x, y = float(result.x[0]), float(result.y[0])
    assert abs(x - 1.0) <= 1e-8 and y == 0.0
    # the honest value: f at the re-solved lower level (x at or within 1e-8 of the kink, where y = 0
    # is a solution or 1e-8 from g's least value), against F* = 1/4 by enumeration
    assert result.verification["y_distance"] <= 1e-6
    assert result.verification["upper_value"] == pytest.approx(hyper_value(1.0), abs=1e-6)


@pytest.mark.parametrize("x0", [2.5, 0.2, 0.7])
def test_y_moves_to_its_solution_where_that_costs_f_less_than_restoring_through_x(x0):
    """weight = 1/10: moving y to 1 costs f 1/10, x's way to the kink more (from 0.2: 0.16) or it
    leads to the local solution (F = 1/4): pgdqp ends at x* = 1/2, y* = 1, F* = 1/10."""
    result = solve(kink(1.0, x0, weight=0.1), "pgdqp", max_iter=300, log_every=300, seed=0)
    assert abs(float(result.x[0]) - 0.5) <= 1e-6 and float(result.y[0]) == 1.0
    assert result.verification["upper_value"] == pytest.approx(hyper_value(0.5, 0.1), abs=1e-6)
    assert result.success


def test_only_held_coordinates_without_curvature_are_restored():
    y = torch.tensor([0.0, 0.0, 1.0, 0.5, 0.0], dtype=D)
    c = torch.tensor([-1.0, -1.0, 2.0, -1.0, 3.0], dtype=D)    # g's slope: inward, inward, inward, interior, outward
    fy = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0], dtype=D)    # f holds 0 and 2; not 1 (f pulls inward too)
    bounds = (0.0, 1.0)
    restore = restored_through_x(y, c, fy, torch.tensor(0.0, dtype=D), bounds)
    assert torch.equal(restore, torch.tensor([-1.0, 0.0, 2.0, 0.0, 0.0], dtype=D))
    # a Newton step of some length (curvature along c), no box, or nothing held: nothing restored
    assert restored_through_x(y, c, fy, torch.tensor(0.1, dtype=D), bounds) is None
    assert restored_through_x(y, c, fy, torch.tensor(0.0, dtype=D), None) is None
    assert restored_through_x(y, c, torch.zeros_like(fy), torch.tensor(0.0, dtype=D), bounds) is None


@pytest.mark.slow
def test_solve_batch_members_restore_through_x_as_their_lone_runs():
    """Under torch.func.vmap the restoration is computed for every member (no test on values)."""
    shared = kink(1.0, 0.0)

    def factory(seed: int) -> BilevelProblem:   # one f and g, the start by seed
        return BilevelProblem(shared.f, shared.g, torch.tensor([[2.5, 0.2, 1.7][seed]], dtype=D), shared.y0,
                              x_bounds=(0.0, 3.0), y_bounds=(0.0, 1.0))

    batch = solve_batch(factory, "pgdqp", seeds=[0, 1, 2], max_iter=300, log_every=300, verify=False)
    for seed, member in enumerate(batch):
        lone = solve(factory(seed), "pgdqp", max_iter=300, log_every=300, verify=False, seed=0)
        assert abs(float(member.x[0]) - 1.0) <= 1e-8 and float(member.y[0]) == 0.0
        assert torch.allclose(member.x, lone.x, rtol=0, atol=1e-8)


def coupled(x0: list[float]) -> BilevelProblem:
    """Two coordinates: f = ||x - a||^2 + w'y, g = (A x - b)'y, x in [0, 3]^2, y in [0, 1]^2, y0 = 0;
    each slope c_i = (A x - b)_i depends on both x's."""
    a, w = torch.tensor([0.5, 1.5], dtype=D), torch.tensor([2.0, 3.0], dtype=D)
    A, b = torch.tensor([[1.0, 0.5], [-0.3, 1.0]], dtype=D), torch.tensor([1.0, 2.0], dtype=D)
    return BilevelProblem(lambda x, y: ((x - a) ** 2).sum() + (w * y).sum(), lambda x, y: ((A @ x - b) * y).sum(),
                          torch.tensor(x0, dtype=D), torch.zeros(2, dtype=D), x_bounds=(0.0, 3.0), y_bounds=(0.0, 1.0),
                          info={"a": a, "w": w, "A": A, "b": b})


def coupled_value(problem: BilevelProblem, x: torch.Tensor) -> float:
    """F(x): the vertex of [0, 1]^2 of least g, f's least among ties (within 1e-9)."""
    A, b = problem.info["A"], problem.info["b"]
    vertices = [torch.tensor(v, dtype=D) for v in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))]
    values = [float((A @ x - b) @ v) for v in vertices]
    return min(float(problem.f(x, v)) for v, g in zip(vertices, values) if g <= min(values) + 1e-9)


@pytest.mark.parametrize("x0", [[2.5, 2.5], [0.2, 0.2]])
def test_two_held_coordinates_with_coupled_slopes(x0):
    """F* by closed form: with y = 0 (feasible where A x >= b) f is ||x - a||^2, least at the projection
    x* of a on the half-plane (A x)_2 >= b_2, where (A x*)_1 > b_1 too: F* = ||x* - a||^2 = 0.3876;
    the branch y_2 = 1 costs 3 at least. A grid of F over the box finds nothing lower. Before the
    restoration through x, pgdqp ended on that branch (x = a, y = (0, 1), F = 3) from both starts."""
    problem = coupled(x0)
    a, A, b = problem.info["a"], problem.info["A"], problem.info["b"]
    row = A[1]
    x_star = a + (b[1] - row @ a) / (row @ row) * row
    F_star = float(((x_star - a) ** 2).sum())
    assert float(A[0] @ x_star) > float(b[0]) and F_star == pytest.approx(0.38761, abs=1e-5)
    grid = torch.linspace(0.0, 3.0, 61, dtype=D)
    assert min(coupled_value(problem, torch.stack([u, v])) for u in grid for v in grid) >= F_star
    result = solve(problem, "pgdqp", max_iter=500, log_every=500, seed=0)
    assert torch.allclose(result.x, x_star, rtol=0, atol=1e-6) and torch.equal(result.y, torch.zeros(2, dtype=D))
    assert result.verification["upper_value"] == pytest.approx(F_star, abs=1e-6)
