"""iaptt_gm, meha, f2ba, hjfbio: costs, hand-computed steps, convergence, bad input, CLI."""
import dataclasses

import pytest
import torch

import bilevel
from bilevel import PROBLEMS, BilevelProblem
from bilevel.cli.main import main
from bilevel.core.oracles import Autograd, Oracle
from bilevel.solvers import F2BA, IAPTTGM, MEHA, HJFBiO
from bilevel.solvers.hjfbio import project_ball

D = torch.float64
METHODS = ("iaptt_gm", "meha", "f2ba", "hjfbio")


def small_quadratic(seed=0, n=3, m=4):
    """f = 1/2||x - a||^2 + 1/2||y - b||^2, g = 1/2 y^T Q y - y^T B x, and its data."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, m, generator=gen, dtype=D)
    Q = A @ A.T / m + torch.eye(m, dtype=D)
    B = torch.randn(m, n, generator=gen, dtype=D)
    a, b = torch.randn(n, generator=gen, dtype=D), torch.randn(m, generator=gen, dtype=D)
    x0, y0 = torch.randn(n, generator=gen, dtype=D), torch.randn(m, generator=gen, dtype=D)
    problem = BilevelProblem(lambda x, y: 0.5 * ((x - a) ** 2).sum() + 0.5 * ((y - b) ** 2).sum(),
                             lambda x, y: 0.5 * y @ Q @ y - y @ B @ x, x0, y0)
    return problem, Q, B, a, b


def one_step(problem, solver, state=None, **fields):
    """(the next state, the aux of the first, the oracle calls of the step) from `state` (default:
    the solver's start with `fields` replaced)."""
    oracle = Oracle(Autograd(problem.f, problem.g))
    state = state or dataclasses.replace(solver.init(problem, oracle, max_iter=1, generator=torch.Generator()),
                                         **fields)
    before = oracle.snapshot()
    new, aux = solver.step(problem, oracle, state)
    after = oracle.snapshot()
    return new, aux, {k: after[k] - before[k] for k in after}


# ----- oracles ----------------------------------------------------------------------------
def test_unrolled_grad_matches_finite_differences_on_nonconvex_g():
    gen = torch.Generator().manual_seed(3)
    H = torch.randn(3, 3, generator=gen, dtype=D)
    c = torch.randn(3, generator=gen, dtype=D)
    f = lambda x, y: torch.sin(c @ y) + (x * y).sum() + (x ** 2).sum()
    g = lambda x, y: torch.cos(0.5 * ((H @ y - x) ** 2).sum()) + 0.5 * (y ** 2).sum()
    x, z = torch.randn(3, generator=gen, dtype=D), torch.randn(3, generator=gen, dtype=D)
    oracle = Oracle(Autograd(f, g))
    run = oracle.unrolled_grad(x, z, 5, 0.1, select=lambda fv: 3)
    assert run.index == 3 and run.f_values.shape == (5,)
    snap = oracle.snapshot()
    assert (snap["n_grad_g"], snap["n_f"], snap["n_grad_f"], snap["n_hvp"]) == (5, 5, 1, 3)

    def phi(x, z):
        return float(f(x, Oracle(Autograd(f, g)).unrolled_grad(x, z, 5, 0.1, select=lambda fv: 3).y_selected))

    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3, dtype=D)
        e[i] = eps
        assert abs((phi(x + e, z) - phi(x - e, z)) / (2 * eps) - float(run.grad_x[i])) < 1e-6
        assert abs((phi(x, z + e) - phi(x, z - e)) / (2 * eps) - float(run.grad_z[i])) < 1e-6
    # f_values are f along the trajectory; y_last is y_T
    y = z
    for t in range(5):
        y = y - 0.1 * Oracle(Autograd(f, g)).grad_g_y(x, y)
        torch.testing.assert_close(run.f_values[t], f(x, y))
    torch.testing.assert_close(run.y_last, y)


def test_unrolled_grad_rejects_bad_selection():
    problem, *_ = small_quadratic()
    with pytest.raises(ValueError, match="select"):
        Oracle(Autograd(problem.f, problem.g)).unrolled_grad(problem.x0, problem.y0, 3, 0.1, select=lambda fv: 0)


def test_finite_difference_products_are_exact_on_a_quadratic():
    problem, Q, B, *_ = small_quadratic()
    oracle = Oracle(Autograd(problem.f, problem.g))
    v = torch.randn(4, dtype=D)
    jv, hv = oracle.fd_vjp_grad_y_g(problem.x0, problem.y0, v, 1e-3)
    ex_jv, ex_hv = oracle.vjp_grad_y_g(problem.x0, problem.y0, v)
    torch.testing.assert_close(hv, Q @ v)
    torch.testing.assert_close(jv, -B.T @ v)
    torch.testing.assert_close((jv, hv), (ex_jv, ex_hv))
    assert oracle.snapshot()["n_grad_g"] == 2


def test_project_ball():
    v = torch.tensor([3.0, 4.0], dtype=D)
    torch.testing.assert_close(project_ball(v, 1.0), v / 5)
    torch.testing.assert_close(project_ball(v, 10.0), v)
    torch.testing.assert_close(project_ball(torch.zeros(2, dtype=D), 1.0), torch.zeros(2, dtype=D))


# ----- one step: hand-computed update and oracle cost ---------------------------------------
def test_iaptt_gm_step_and_cost():
    problem, Q, B, a, b = small_quadratic()
    T, s = 6, 0.1
    solver = IAPTTGM(step_size=0.2, lower_step_size=0.3, inner_steps=T, inner_step_size=s)
    new, aux, cost = one_step(problem, solver)
    x, z = problem.x0, problem.y0
    A = torch.eye(4, dtype=D) - s * Q
    ys, dydx = [z], [torch.zeros(4, 3, dtype=D)]
    for _ in range(T):                     # y_t = A y_{t-1} + s B x, dy_t/dx = A dy_{t-1}/dx + s B
        ys.append(A @ ys[-1] + s * B @ x)
        dydx.append(A @ dydx[-1] + s * B)
    fs = [0.5 * ((x - a) ** 2).sum() + 0.5 * ((y - b) ** 2).sum() for y in ys[1:]]
    p = int(torch.argmax(torch.stack(fs))) + 1
    gx = (x - a) + dydx[p].T @ (ys[p] - b)
    gz = torch.linalg.matrix_power(A, p).T @ (ys[p] - b)
    torch.testing.assert_close(new.x, x - 0.2 * gx)
    torch.testing.assert_close(new.z, z - 0.3 * gz)
    torch.testing.assert_close(new.y, ys[T])
    assert int(aux.diagnostics["truncation"]) == p
    assert cost == {"n_f": T + 1, "n_g": 0, "n_grad_f": 1, "n_grad_g": T + 1, "n_hvp": p,
                    "oracle_calls": 2 * T + 3 + p}


def test_meha_step_and_cost():
    problem, Q, B, a, b = small_quadratic()
    solver = MEHA(step_size=0.2, lower_step_size=0.3, inner_step_size=0.1, gamma=2.0, c0=3.0, power=0.4)
    new, aux, cost = one_step(problem, solver)
    x, y = problem.x0, problem.y0
    theta = y - 0.1 * (Q @ y - B @ x + (y - y) / 2.0)        # theta_0 = y_0
    c = 3.0                                                    # c_0 (0 + 1)^p
    d_x = (x - a) / c + (-B.T @ y) - (-B.T @ theta)
    d_y = (y - b) / c + (Q @ y - B @ x) - (y - theta) / 2.0
    torch.testing.assert_close(new.x, x - 0.2 * d_x)
    torch.testing.assert_close(new.y, y - 0.3 * d_y)
    torch.testing.assert_close(new.theta, theta)
    torch.testing.assert_close(aux.nu, c * (y - theta))
    # the penalty grows as c_0 (k + 1)^p in the next step
    _, next_aux, _ = one_step(problem, solver, new)
    assert float(next_aux.diagnostics["penalty"]) == pytest.approx(3.0 * 2 ** 0.4)
    # one gradient of f, three of g, and one product for the KKT residual
    assert cost == {"n_f": 0, "n_g": 0, "n_grad_f": 1, "n_grad_g": 3, "n_hvp": 1, "oracle_calls": 5}


def test_f2ba_step_and_cost():
    problem, Q, B, a, b = small_quadratic()
    T, eta, lam = 4, 0.1, 5.0
    solver = F2BA(step_size=0.2, penalty=lam, inner_steps=T, inner_step_size=eta)
    new, aux, cost = one_step(problem, solver)
    x = problem.x0
    z = y = problem.y0
    for _ in range(T):
        z = z - eta * (Q @ z - B @ x)
        y = y - eta * ((y - b) / lam + Q @ y - B @ x)
    d_x = (x - a) + lam * (-B.T @ y + B.T @ z)
    torch.testing.assert_close(new.x, x - 0.2 * d_x)
    torch.testing.assert_close(new.y, y)
    torch.testing.assert_close(aux.nu, lam * (y - z))
    # 2T + 3 in the paper's count (a gradient of f/lam + g is one): T + 1 of f, 2T + 2 of g
    assert cost["n_grad_f"] + cost["n_grad_g"] - T == 2 * T + 3
    assert cost == {"n_f": 0, "n_g": 0, "n_grad_f": T + 1, "n_grad_g": 2 * T + 2, "n_hvp": 1,
                    "oracle_calls": 3 * T + 4}


def test_hjfbio_step_and_cost():
    problem, Q, B, a, b = small_quadratic()
    solver = HJFBiO(step_size=0.2, lower_step_size=0.3, v_step_size=0.1, radius=0.5, delta=1e-4)
    x, y = problem.x0, problem.y0
    v = torch.tensor([0.1, -0.2, 0.05, 0.3], dtype=D)
    new, aux, cost = one_step(problem, solver, v=v)
    torch.testing.assert_close(new.x, x - 0.2 * ((x - a) - (-B.T @ v)))
    torch.testing.assert_close(new.y, y - 0.3 * (Q @ y - B @ x))
    v_new = v - 0.1 * (Q @ v - (y - b))
    v_new = v_new * min(1.0, 0.5 / float(v_new.norm()))
    torch.testing.assert_close(new.v, v_new)
    torch.testing.assert_close(aux.nu, -v_new)
    rx, ry = (x - a) + B.T @ v, (y - b) - Q @ v
    torch.testing.assert_close(aux.diagnostics["kkt_stationarity"], rx @ rx + ry @ ry)
    assert cost == {"n_f": 0, "n_g": 0, "n_grad_f": 1, "n_grad_g": 3, "n_hvp": 0, "oracle_calls": 4}


# ----- convergence ------------------------------------------------------------------------
ITERS = {"iaptt_gm": 300, "meha": 3000, "f2ba": 1000, "hjfbio": 2000}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_defaults_reach_the_quadratic_solution(method):
    problem = PROBLEMS["quadratic"](seed=0)
    result = bilevel.solve(problem, method, max_iter=ITERS[method], log_every=100)
    assert result.status is bilevel.Status.COMPLETED
    assert float((result.x - problem.info["x_star"]).norm()) < 5e-2
    assert result.history["h"][-1] < 1e-2


def rank_deficient_problem():
    """g = 1/2 ||P y - x||^2 with P of rank 2 in R^{3x4} (singular values 1, 0.5): for every
    x the lower-level solutions form a plane, and grad_y g = 0 is solvable for every x."""
    gen = torch.Generator().manual_seed(7)
    U, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=D))
    V, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=D))
    P = U[:, :2] @ torch.diag(torch.tensor([1.0, 0.5], dtype=D)) @ V[:, :2].T
    a, b = torch.randn(3, generator=gen, dtype=D), torch.randn(4, generator=gen, dtype=D)
    return BilevelProblem(lambda x, y: 0.5 * ((x - a) ** 2).sum() + 0.5 * ((y - b) ** 2).sum(),
                          lambda x, y: 0.5 * ((P @ y - x) ** 2).sum(),
                          torch.zeros(3, dtype=D), torch.zeros(4, dtype=D), name="rank-deficient")


# L_g = 1 on this problem, so the inner steps can be larger than the quadratic's defaults
RANK_DEFICIENT_OPTIONS = {
    "iaptt_gm": {"inner_step_size": 0.5},
    "meha": {"step_size": 0.2, "lower_step_size": 0.2, "inner_step_size": 0.5, "c0": 10.0},
    "f2ba": {"inner_step_size": 0.5},
    "hjfbio": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_many_lower_level_solutions_reach_small_h(method):
    problem = rank_deficient_problem()
    result = bilevel.solve(problem, method, max_iter=ITERS[method], log_every=100, options=RANK_DEFICIENT_OPTIONS[method])
    assert result.status is bilevel.Status.COMPLETED
    assert result.history["h"][-1] < 1e-3
    # hjfbio's v has no solution of grad_yy g v = grad_y f here (P^T P is singular), so its
    # x direction is poor: it lowers f (6.5 -> 4.9) where the others reach about 1.8
    assert result.history["f"][-1] < (0.8 if method == "hjfbio" else 0.5) * result.history["f"][0]


# synthetic-nc with cond(H) = 2: L_g is about 4 times the quadratic's, so smaller steps
NC_OPTIONS = {
    "iaptt_gm": {"step_size": 0.05, "lower_step_size": 0.05, "inner_step_size": 0.05},
    "meha": {"step_size": 0.02, "lower_step_size": 0.02, "inner_step_size": 0.05},
    "f2ba": {"step_size": 0.02, "inner_step_size": 0.02},
    "hjfbio": {"step_size": 0.002, "lower_step_size": 0.05, "v_step_size": 0.05, "radius": 10.0},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_synthetic_nc_reaches_an_approximate_kkt_point(method):
    problem = PROBLEMS["synthetic-nc"](dim=5, cond=2.0, seed=0)
    result = bilevel.solve(problem, method, max_iter=ITERS[method], log_every=100, kkt="least_squares", options=NC_OPTIONS[method])
    assert result.status is bilevel.Status.COMPLETED
    assert result.history["h"][-1] < 1e-4
    assert result.history["f"][-1] < result.history["f"][0] - 1.0
    if method != "hjfbio":
        # hjfbio's multiplier -v solves grad_yy g v = grad_y f, which has no solution here:
        # on the lower-level solutions 1/2||H y - x||^2 = pi, grad_yy g has rank one, and
        # v runs to the ball's radius; its own KKT residual stays large (documented).
        assert result.history["kkt_stationarity"][-1] < 1e-2


# ----- contracts --------------------------------------------------------------------------
@pytest.mark.parametrize("cls, option, value", [
    (IAPTTGM, "step_size", -1.0), (IAPTTGM, "inner_steps", 0), (IAPTTGM, "lower_step_size", 0.0),
    (MEHA, "power", 0.5), (MEHA, "gamma", -2.0), (MEHA, "c0", float("nan")),
    (F2BA, "penalty", 0.0), (F2BA, "inner_steps", 2.5), (F2BA, "inner_step_size", -0.1),
    (HJFBiO, "radius", -1.0), (HJFBiO, "delta", 0.0), (HJFBiO, "v_step_size", "big"),
])
def test_bad_hyperparameters_raise_naming_the_argument(cls, option, value):
    with pytest.raises(ValueError, match=f"Invalid {option}: "):
        cls(**{option: value})


@pytest.mark.parametrize("method", METHODS)
def test_state_type_is_kept_and_bounds_are_honoured(method):
    problem = PROBLEMS["quadratic"](seed=1)
    problem = BilevelProblem(problem.f, problem.g, problem.x0, problem.y0,
                             x_bounds=(-0.1, 0.1), y_bounds=(-0.2, 0.2))
    result = bilevel.solve(problem, method, max_iter=20)
    assert type(result.state) is type(bilevel.SOLVERS[method]().init(
        problem, Oracle(Autograd(problem.f, problem.g)), max_iter=1, generator=torch.Generator()))
    assert float(result.x.abs().max()) <= 0.1 and float(result.y.abs().max()) <= 0.2
    for key in ("f", "g", "h", "kkt_stationarity", "kkt_feasibility"):
        assert key in result.history


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_cli_runs_coreset(method, tmp_path, capsys):
    assert main(["run", "--problem", "coreset", "--method", method, "--max-iter", "500",
                 "--no-progress", "--out", str(tmp_path)]) == 0
    assert len(list((tmp_path / "runs").glob("*/history.parquet"))) == 1
