"""schedule="theorem": Algorithm 1 with the parameters of its theorems as written. With Theorem 4.5's
(the default) the error and h shrink with K on strongly convex quadratics, as the paper's Fig. 4
reports; with Theorem 4.2's the iterates obey its bound, whose term alpha^2 L_h^2 C_f^2 keeps h away
from zero at practical K (a period-2 cycle of the iteration itself)."""
import pytest
import torch
from bilevel.core.oracles import Autograd, Oracle
from test_pgdqp_convergence import quadratic

from bilevel import solve
from bilevel.solvers import PGDQP


def _jacobian_norm(problem):
    Q, A = problem.g.keywords["Q"], problem.g.keywords["A"]
    return float(torch.linalg.matrix_norm(torch.cat([-A, Q], 1), 2))


def test_theorem_parameters_are_the_formulas_with_the_true_lipschitz_constant_of_grad_h():
    """alpha = K^(-1/3), gamma = min(alpha, 1/(L_f + alpha L_h)), and L_h the largest eigenvalue
    of grad^2 h = 2 J^T J (J = [-A, Q]) up to power iteration's accuracy (from below)."""
    problem, K = quadratic(0), 500
    state = PGDQP(schedule="theorem", rho="grad").init(problem, Oracle(Autograd(problem.f, problem.g)), max_iter=K,
                                           generator=torch.Generator().manual_seed(0))
    alpha = K ** (-1 / 3)
    assert state.alpha0 == alpha
    assert state.gamma0 == min(alpha, 1.0 / (state.lipschitz_f + alpha * state.lipschitz_h))
    exact = 2 * _jacobian_norm(problem) ** 2
    assert 0.9 * exact <= state.lipschitz_h <= exact * (1 + 1e-12)


def test_theorem_schedule_ends_in_a_two_cycle_where_gamma_lambda_exceeds_two_over_l_h():
    """The step on h is gamma lambda grad h with lambda = alpha - <grad h, grad f> / ||grad h||^2,
    which exceeds alpha where grad f opposes grad h; gamma <= 1/(L_f + alpha L_h) then does not
    keep gamma lambda L_h below 2, and the iterates alternate between two points across the
    valley of h (h > 0 at both) instead of converging: a property of the theorem's parameters,
    not of the estimates (L_h is exact here, previous test)."""
    problem, K = quadratic(0), 500
    iterates = []
    result = solve(problem, "pgdqp", max_iter=K, log_every=1, options={"schedule": "theorem", "rho": "grad"},
                   callback=lambda state, aux: iterates.append(state.x.clone()) and False)
    assert float((iterates[-1] - iterates[-3]).norm()) <= 1e-8 * float(iterates[-1].norm())
    assert float((iterates[-1] - iterates[-2]).norm()) >= 1e-4
    assert min(result.history["h"][-2:]) >= 1e-1
    lipschitz_h = 2 * _jacobian_norm(problem) ** 2
    gamma = result.history["step_size"][-1]
    assert max(gamma * lam * lipschitz_h for lam in result.history["lambda"][-2:]) > 2.0
    assert max(result.history["lambda"][-2:]) > result.history["alpha"][-1]


def _gradients(problem, x, y):
    """(grad f, grad h) in closed form: f = 1/2 ||x - a||^2 + 1/2 ||y - b||^2, c = Q y - A x,
    h = ||c||^2, grad h = 2 J^T c with J = [-A, Q]."""
    Q, A = problem.g.keywords["Q"], problem.g.keywords["A"]
    a, b = problem.f.keywords["a"], problem.f.keywords["b"]
    c = Q @ y - A @ x
    return torch.cat([x - a, y - b]), 2 * torch.cat([-A.T @ c, Q @ c])


def test_theorem_4_2_iterates_obey_its_bound_on_the_mean_squared_gradient_of_h():
    """(1/K) sum ||grad h_k||^2 <= 2 alpha C_0 / (gamma K) + 2 L_h (f_0 + alpha^3 C_0 - f_min) / (gamma K)
    + alpha^2 L_h^2 C_f^2 with C_0 = h_0 / alpha^2 (Algorithm 1's line 2),
    f_min = 0 (f is a sum of squares) and C_f the largest ||grad f|| along the iterates: recomputed
    here in closed form from the iterates."""
    problem, K = quadratic(1), 2000
    points = []
    result = solve(problem, "pgdqp", max_iter=K, log_every=K, kkt="none", verify=False,
                   options={"schedule": "theorem", "rho": "grad"},
                   callback=lambda state, aux: points.append((state.x.clone(), state.y.clone())) and False)
    assert len(points) == K
    start = PGDQP(schedule="theorem", rho="grad").init(problem, Oracle(Autograd(problem.f, problem.g)), max_iter=K,
                                                       generator=torch.Generator().manual_seed(0))
    points = [(start.x, start.y)] + points[:-1]   # z_0, ..., z_(K-1)
    alpha, gamma = K ** (-1 / 3), result.history["step_size"][-1]
    lipschitz_h = 2 * _jacobian_norm(problem) ** 2
    c0 = float((problem.g.keywords["Q"] @ start.y - problem.g.keywords["A"] @ start.x).square().sum()) / alpha ** 2
    grads = [_gradients(problem, x, y) for x, y in points]
    mean_grad_h = sum(float(gh @ gh) for _, gh in grads) / K
    c_f = max(float(gf.norm()) for gf, _ in grads)
    f0 = float(problem.f(start.x, start.y))
    bound = (2 * alpha * c0 / (gamma * K) + 2 * lipschitz_h * (f0 + alpha ** 3 * c0) / (gamma * K)
             + alpha ** 2 * lipschitz_h ** 2 * c_f ** 2)
    assert 0 < mean_grad_h <= bound
    # and the bound is the reason h does not vanish: its last term alone exceeds the observed mean
    assert alpha ** 2 * lipschitz_h ** 2 * c_f ** 2 > mean_grad_h


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_theorem_4_5_error_and_h_shrink_with_k(seed):
    """The default theorem parameters (rho="warm", alpha = K^(-1/6), gamma = min(K^(-2/3), 1/L_f)):
    |x_K - x*| and h_K fall with K = 500, 5000, 20000 on 6x5 quadratics of cond 8."""
    problem = quadratic(seed)
    errors, hs = [], []
    for K in (500, 5000, 20000):
        result = solve(problem, "pgdqp", max_iter=K, log_every=K, kkt="none", verify=False,
                       options={"schedule": "theorem"})
        errors.append(float((result.x - problem.info["x_star"]).norm()))
        hs.append(result.history["h"][-1])
    assert errors[0] > 2 * errors[1] > 4 * errors[2]
    assert hs[0] > 4 * hs[1] > 16 * hs[2]
    assert errors[2] <= 0.05 and hs[2] <= 1e-2
