"""Oracles against closed forms and finite differences."""
import torch

from bilevel import PROBLEMS
from bilevel.core.kkt import implicit_gradient, kkt_info, least_squares_multiplier
from bilevel.core.linear import ConjugateGradient, Neumann
from bilevel.core.oracles import Autograd, Oracle

D = torch.float64


def quadratic_data(seed=0, n=4, m=3):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, m, generator=gen, dtype=D)
    Q = A @ A.T + m * torch.eye(m, dtype=D)
    B = torch.randn(m, n, generator=gen, dtype=D)
    x, y = torch.randn(n, generator=gen, dtype=D), torch.randn(m, generator=gen, dtype=D)
    return Q, B, x, y


def test_h_and_grad_matches_closed_form_on_quadratic():
    Q, B, x, y = quadratic_data()
    oracle = Oracle(Autograd(lambda x, y: (x ** 2).sum() + y.sum(), lambda x, y: 0.5 * y @ Q @ y - y @ B @ x))
    g, gy, h, hx, hy = oracle.h_and_grad(x, y)
    r = Q @ y - B @ x                               # grad_y g
    torch.testing.assert_close(gy, r)
    torch.testing.assert_close(h, r @ r)
    torch.testing.assert_close(hx, 2 * (-B).T @ r)  # 2 grad_yx g^T grad_y g
    torch.testing.assert_close(hy, 2 * Q @ r)       # 2 grad_yy g grad_y g
    assert oracle.snapshot()["n_hvp"] == 1 and oracle.snapshot()["n_grad_g"] == 1


def test_grad_h_matches_finite_differences_on_nonconvex_g():
    gen = torch.Generator().manual_seed(1)
    H = torch.randn(3, 3, generator=gen, dtype=D)
    g = lambda x, y: torch.cos(0.5 * ((H @ y - x) ** 2).sum()) + (x * y).sum() ** 2
    oracle = Oracle(Autograd(lambda x, y: x.sum(), g))
    x, y = torch.randn(3, generator=gen, dtype=D), torch.randn(3, generator=gen, dtype=D)
    _, _, h, hx, hy = oracle.h_and_grad(x, y)

    def h_at(x, y):
        return Oracle(Autograd(lambda a, b: a.sum(), g)).h_and_grad(x, y)[2]

    eps = 1e-6
    for i in range(3):
        e = torch.zeros(3, dtype=D)
        e[i] = eps
        assert abs(float((h_at(x + e, y) - h_at(x - e, y)) / (2 * eps) - hx[i])) < 1e-5
        assert abs(float((h_at(x, y + e) - h_at(x, y - e)) / (2 * eps) - hy[i])) < 1e-5


def test_vjp_and_jvp_of_grad_y_g_match_the_jacobian():
    Q, B, x, y = quadratic_data(2)
    oracle = Oracle(Autograd(lambda x, y: x.sum(), lambda x, y: 0.5 * y @ Q @ y - y @ B @ x + (y ** 3).sum()))
    J_x, J_y = -B, Q + torch.diag(6 * y)           # Jacobian of grad_y g = Q y - B x + 3 y^2
    v = torch.randn(3, dtype=D)
    jx, jy = oracle.vjp_grad_y_g(x, y, v)
    torch.testing.assert_close(jx, J_x.T @ v)
    torch.testing.assert_close(jy, J_y.T @ v)
    dx, dy = torch.randn(4, dtype=D), torch.randn(3, dtype=D)
    torch.testing.assert_close(oracle.jvp_grad_y_g(x, y, dx, dy), J_x @ dx + J_y @ dy)


def test_grad_f_and_value_counts():
    oracle = Oracle(Autograd(lambda x, y: (x * y).sum(), lambda x, y: (y ** 2).sum()))
    x, y = torch.ones(2, dtype=D), 2 * torch.ones(2, dtype=D)
    f, gx, gy = oracle.grad_f(x, y)
    assert float(f) == 4.0
    torch.testing.assert_close(gx, y)
    torch.testing.assert_close(gy, x)
    oracle.f(x, y)
    oracle.g(x, y)
    snap = oracle.snapshot()
    assert (snap["n_grad_f"], snap["n_f"], snap["n_g"], snap["oracle_calls"]) == (1, 1, 1, 3)


def test_linear_solvers_solve_spd_system():
    Q, _, _, b = quadratic_data(3)
    exact = torch.linalg.solve(Q, b)
    torch.testing.assert_close(ConjugateGradient(iters=10)(lambda v: Q @ v, b), exact)
    lam_max = float(torch.linalg.eigvalsh(Q).max())
    approx = Neumann(iters=2000, step_size=1.0 / lam_max)(lambda v: Q @ v, b)
    torch.testing.assert_close(approx, exact, atol=1e-6, rtol=1e-6)


def test_hypergradient_matches_synthetic_sc_closed_form_metric():
    p = PROBLEMS["synthetic-sc"](seed=3)
    oracle = Oracle(Autograd(p.f, p.g))
    F = implicit_gradient(oracle, p.x0, p.y0)
    assert abs(float(F.norm()) - p.metrics(p.x0, p.y0)["hypergradient_norm"]) < 1e-8


def test_least_squares_multiplier_zeroes_stationarity_at_the_solution():
    p = PROBLEMS["quadratic"](seed=4)
    x, y = p.info["x_star"], p.info["y_star"]
    info = kkt_info(Oracle(Autograd(p.f, p.g)), x, y)
    assert float(info["h"]) < 1e-20
    assert float(info["kkt_stationarity"]) < 1e-16
    # away from the solution the residual is not zero
    assert float(kkt_info(Oracle(Autograd(p.f, p.g)), x + 0.1, y)["kkt_stationarity"]) > 1e-4
    oracle = Oracle(Autograd(p.f, p.g))
    _, gfx, gfy = oracle.grad_f(x, y)
    nu = least_squares_multiplier(oracle, x, y, (gfx, gfy))
    jx, jy = oracle.vjp_grad_y_g(x, y, nu)
    torch.testing.assert_close(gfy + jy, torch.zeros_like(gfy), atol=1e-10, rtol=0)
