"""Every baseline's step worked by hand on a small quadratic, its oracle calls against the
method's stated cost, the oracles the steps rely on (unrolled gradients, finite-difference
products, the ball projection), and hyperparameters that are refused with the argument named."""
import dataclasses

import pytest
import torch
from conftest import HAND_A as A
from conftest import HAND_B as b
from conftest import HAND_Q as Q
from conftest import HAND_X0 as X0
from conftest import HAND_Y0 as Y0
from conftest import hand_quadratic as problem

from bilevel import BilevelProblem, ConjugateGradient, Neumann, solve
from bilevel.core.oracles import Autograd, Oracle
from bilevel.solvers import BOME, F2BA, GALET, IAPTTGM, MEHA, VPBGD, AIDBiO, HJFBiO
from bilevel.solvers.hjfbio import project_ball

D = torch.float64


def counts(result):
    return {k: int(result.history[k][1]) for k in ("n_f", "n_grad_f", "n_grad_g", "n_hvp")}


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


def test_bome_step_by_hand_and_cost():
    s, a, T, eta = 0.1, 0.05, 3, 0.5
    x, y = X0, Y0
    y_hat = y
    for _ in range(T):
        y_hat = y_hat - s * (Q @ y_hat - A @ x)
    qx, qy = -A.T @ y + A.T @ y_hat, Q @ y - A @ x           # grad g(x, y) - (grad_x g(x, y_hat), 0)
    fx, fy = x, y - b
    qq = qx @ qx + qy @ qy
    lam = max(0.0, float(eta * qq - fx @ qx - fy @ qy)) / (float(qq) + 1e-8)
    r = solve(problem(), BOME(step_size=a, lower_step_size=a, inner_steps=T, inner_step_size=s, eta=eta), max_iter=1,
              kkt="none")
    torch.testing.assert_close(r.x, x - a * (fx + lam * qx))
    torch.testing.assert_close(r.y, y - a * (fy + lam * qy))
    # T + 1 gradients of g (the one at (x, y) doubles as the first inner step), one grad f, no HVP
    assert counts(r) == {"n_f": 0, "n_grad_f": 1, "n_grad_g": T + 1, "n_hvp": 0}
    r10 = solve(problem(), "bome", max_iter=1, kkt="none", options=dict(inner_steps=10))
    # the default steps add 20 products at the start (the power iteration for L_g), none per step
    assert counts(r10)["n_grad_g"] == 11 and counts(r10)["n_hvp"] == 20


def test_bome_adaptive_step_takes_lambda_in_the_metric_of_its_step():
    """step_size=None: lambda is BOME's multiplier in the metric diag(r I, I), r = eta_x / lower_step_size."""
    s, a, T, eta, scale = 0.1, 0.05, 3, 0.5, 0.2
    x, y = X0, Y0
    y_hat = y
    for _ in range(T):
        y_hat = y_hat - s * (Q @ y_hat - A @ x)
    qx, qy = -A.T @ y + A.T @ y_hat, Q @ y - A @ x
    fx, fy = x, y - b

    def lam(r):
        qq = r * qx @ qx + qy @ qy
        return max(0.0, float(eta * qq - r * fx @ qx - fy @ qy)) / (float(qq) + 1e-8)

    def x_step(d):
        return scale / d.pow(2).mean().sqrt()

    ratio = x_step(fx + lam(1.0) * qx) / a
    lam_d = lam(float(ratio))
    assert abs(lam_d - lam(1.0)) > 1e-3                        # the metric matters here
    d = fx + lam_d * qx
    r = solve(problem(), BOME(lower_step_size=a, inner_steps=T, inner_step_size=s, eta=eta, x_scale=scale),
              max_iter=1, kkt="none")
    torch.testing.assert_close(r.x, x - x_step(d) * d)
    torch.testing.assert_close(r.y, y - a * (fy + lam_d * qy))


def test_aid_bio_step_by_hand_and_cost():
    s, a, T, N = 0.2, 0.1, 4, 2
    x, y = X0, Y0
    for _ in range(T):
        y = y - s * (Q @ y - A @ x)
    v = torch.linalg.solve(Q, y - b)                           # CG is exact in N = 2 steps here
    hyper = x - (-A.T @ v)                                     # grad_x f - grad_xy g v
    seen = []
    r = solve(problem(), AIDBiO(step_size=a, inner_steps=T, inner_step_size=s,
                                linear_solver=ConjugateGradient(iters=N, tol=0.0)), max_iter=1, kkt="none",
              callback=lambda state, aux: seen.append(aux))
    torch.testing.assert_close(r.y, y)
    torch.testing.assert_close(r.x, X0 - a * hyper)
    torch.testing.assert_close(seen[0].nu, -v)          # the multiplier the step defines at (x0, y0)
    # N CG products, one Jacobian-vector product, one product for the residual check
    assert counts(r) == {"n_f": 1, "n_grad_f": 1, "n_grad_g": T, "n_hvp": N + 2}
    assert float(seen[0].diagnostics["linear_residual"]) < 1e-12


def test_aid_bio_warns_when_the_hessian_is_singular():
    from bilevel.problems.bolib import SUITE
    from bilevel.solvers.aid_bio import SingularHessianWarning
    with pytest.warns(SingularHessianWarning, match="singular"):
        r = solve(SUITE["continuum/1"](), "aid_bio", max_iter=3, log_every=1, kkt="none", seed=0)
    assert min(r.history["linear_residual"]) > 0.5          # grad_y f has a part outside grad_yy g's range
    # the finding outlives the warning: it is in the message that summaries keep
    assert ("completed: ran max_iter iterations (no tol was given); grad_yy g v = grad_y f was not solved at "
            "iteration 0 (relative residual") in r.message
    assert "so the hypergradient and x cannot be trusted; galet solves the least-squares system instead" in r.message
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", SingularHessianWarning)
        r = solve(problem(), "aid_bio", max_iter=3, log_every=1, kkt="none", seed=0)
    assert max(r.history["linear_residual"]) < 1e-8
    assert "cannot be trusted" not in r.message


def test_vpbgd_step_by_hand_and_cost():
    a, beta, gamma, T = 0.3, 0.2, 4.0, 2
    x, y, w = X0, Y0, Y0
    for _ in range(T):
        w = w - beta * (Q @ w - A @ x)
    s = min(1 / gamma, 1.0)
    gx, gy, gx_w = -A.T @ y, Q @ y - A @ x, -A.T @ w
    r = solve(problem(), VPBGD(step_size=a, lower_step_size=a, inner_steps=T, inner_step_size=beta, penalty=gamma),
              max_iter=1, kkt="none")
    torch.testing.assert_close(r.x, x - a * s * (x + gamma * (gx - gx_w)))
    torch.testing.assert_close(r.y, y - a * s * ((y - b) + gamma * gy))
    torch.testing.assert_close(r.state.w, w)
    assert counts(r) == {"n_f": 0, "n_grad_f": 1, "n_grad_g": T + 2, "n_hvp": 0}
    # the penalty rises linearly over penalty_warmup iterations (constant after with penalty_power=0)
    r = solve(problem(), VPBGD(penalty=4.0, penalty_warmup=4, penalty_power=0.0), max_iter=6, kkt="none")
    assert r.history["penalty"][:6] == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    # by default it grows as gamma_0 (k + 1)^(1/4), times the warm-up's factor
    r = solve(problem(), VPBGD(penalty=4.0, penalty_warmup=2), max_iter=4, kkt="none")
    assert r.history["penalty"][:4] == pytest.approx([0.0, 4.0 * 2 ** 0.25 / 2, 4.0 * 3 ** 0.25, 4.0 * 4 ** 0.25])


def test_galet_step_by_hand_and_cost():
    s, a, N, T, rho = 0.2, 0.1, 3, 4, 0.05
    x, y = X0, Y0
    for _ in range(N):
        y = y - s * (Q @ y - A @ x)
    fy = y - b
    w = torch.zeros(2, dtype=D)
    for _ in range(T):                                          # the paper's loop from w = 0
        w = w - rho * Q @ (fy + Q @ w)
    seen = []
    r = solve(problem(), GALET(step_size=a, inner_steps=N, inner_step_size=s,
                               linear_solver=Neumann(iters=T, step_size=rho)), max_iter=1, kkt="none",
              callback=lambda state, aux: seen.append(aux))
    torch.testing.assert_close(seen[0].nu, w)
    torch.testing.assert_close(r.x, X0 - a * (X0 + (-A.T @ w)))
    torch.testing.assert_close(r.y, y)
    # N gradients; H^2 products 2 (T - 1), the right-hand side 1, grad_xy g w 1
    assert counts(r) == {"n_f": 1, "n_grad_f": 1, "n_grad_g": N, "n_hvp": 2 * (T - 1) + 2}


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


@pytest.mark.parametrize("cls, kwargs, exc, message", [
    (BOME, dict(step_size=0.0), (ValueError, TypeError), r"Invalid step_size: 0.0"),
    (BOME, dict(phi="hessian"), (ValueError, TypeError), r"Invalid phi: 'hessian'"),
    (BOME, dict(inner_steps=0), (ValueError, TypeError), r"Invalid inner_steps: 0"),
    (AIDBiO, dict(inner_step_size=-1.0), (ValueError, TypeError), r"Invalid inner_step_size: -1.0"),
    (AIDBiO, dict(linear_solver="cg"), (ValueError, TypeError), r"Invalid linear_solver: 'cg'"),
    (AIDBiO, dict(linear_solver={"method": "lu"}), (ValueError, TypeError), r"Invalid linear_solver: \{'method': 'lu'\}"),
    (GALET, dict(linear_solver={"method": "cg", "iter": 5}), (ValueError, TypeError), r"Invalid linear_solver: .*unexpected keyword"),
    (GALET, dict(linear_solver={"method": "neumann", "iters": 0}), (ValueError, TypeError), r"Invalid iters: 0"),
    (VPBGD, dict(penalty=-2.0), (ValueError, TypeError), r"Invalid penalty: -2.0"),
    (VPBGD, dict(penalty_warmup=-1), (ValueError, TypeError), r"Invalid penalty_warmup: -1"),
    (GALET, dict(inner_steps=1.5), (ValueError, TypeError), r"Invalid inner_steps: 1.5"),
    (IAPTTGM, {"step_size": -1.0}, ValueError, r"Invalid step_size: "),
    (IAPTTGM, {"inner_steps": 0}, ValueError, r"Invalid inner_steps: "),
    (IAPTTGM, {"lower_step_size": 0.0}, ValueError, r"Invalid lower_step_size: "),
    (MEHA, {"power": 0.5}, ValueError, r"Invalid power: "),
    (MEHA, {"gamma": -2.0}, ValueError, r"Invalid gamma: "),
    (MEHA, {"c0": float("nan")}, ValueError, r"Invalid c0: "),
    (F2BA, {"penalty": 0.0}, ValueError, r"Invalid penalty: "),
    (F2BA, {"inner_steps": 2.5}, ValueError, r"Invalid inner_steps: "),
    (F2BA, {"inner_step_size": -0.1}, ValueError, r"Invalid inner_step_size: "),
    (HJFBiO, {"radius": -1.0}, ValueError, r"Invalid radius: "),
    (HJFBiO, {"delta": 0.0}, ValueError, r"Invalid delta: "),
    (HJFBiO, {"v_step_size": "big"}, ValueError, r"Invalid v_step_size: "),
])
def test_bad_hyperparameters_name_the_argument(cls, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        cls(**kwargs)


def test_linear_solver_from_a_mapping_as_yaml_gives_it():
    assert AIDBiO(linear_solver={"method": "cg", "iters": 7}).linear_solver == ConjugateGradient(iters=7)
    assert GALET(linear_solver={"method": "neumann", "iters": 4, "step_size": 0.5}).linear_solver == Neumann(4, 0.5)
