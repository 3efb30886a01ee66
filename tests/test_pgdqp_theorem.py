"""schedule="theorem": Algorithm 1 with the parameters of Theorem 4.2 as written, and why h stays
away from zero on a strongly convex quadratic (a period-2 cycle of the iteration itself)."""
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
    state = PGDQP(schedule="theorem").init(problem, Oracle(Autograd(problem.f, problem.g)), max_iter=K,
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
    result = solve(problem, "pgdqp", max_iter=K, log_every=1, options={"schedule": "theorem"},
                   callback=lambda state, aux: iterates.append(state.x.clone()) and False)
    assert float((iterates[-1] - iterates[-3]).norm()) <= 1e-8 * float(iterates[-1].norm())
    assert float((iterates[-1] - iterates[-2]).norm()) >= 1e-4
    assert min(result.history["h"][-2:]) >= 1e-1
    lipschitz_h = 2 * _jacobian_norm(problem) ** 2
    gamma = result.history["step_size"][-1]
    assert max(gamma * lam * lipschitz_h for lam in result.history["lambda"][-2:]) > 2.0
    assert max(result.history["lambda"][-2:]) > result.history["alpha"][-1]
