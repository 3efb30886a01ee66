"""bome, aid_bio, vpbgd, galet: one step by hand on a quadratic, oracle counts against each
method's stated cost, convergence on problems with known answers, and bad hyperparameters."""
import pytest
import torch

from bilevel import PROBLEMS, BilevelProblem, ConjugateGradient, Neumann, Status, solve
from bilevel.cli.main import main
from bilevel.solvers import BOME, GALET, VPBGD, AIDBiO

D = torch.float64
A = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=D)
Q = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=D)
b = torch.tensor([1.0, -1.0], dtype=D)
X0, Y0 = torch.tensor([0.5, -0.5], dtype=D), torch.tensor([1.0, 2.0], dtype=D)


def problem():
    """f = 1/2||x||^2 + 1/2||y - b||^2, g = 1/2 y^T Q y - y^T A x: grad_y g = Q y - A x."""
    return BilevelProblem(lambda x, y: 0.5 * (x @ x) + 0.5 * ((y - b) ** 2).sum(),
                          lambda x, y: 0.5 * y @ Q @ y - y @ A @ x, X0, Y0)


def counts(result):
    return {k: int(result.history[k][1]) for k in ("n_f", "n_grad_f", "n_grad_g", "n_hvp")}


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


@pytest.mark.parametrize("method, scale", [("aid_bio", 0.2), ("galet", 0.2), ("hjfbio", 0.1), ("iaptt_gm", 0.2),
                                           ("bome", 0.2)])
def test_default_x_step_is_adagrad_norm(method, scale):
    """step_size=None: the first x step has root-mean-square length x_scale whatever the scale of f,
    x_memory holds mean(d^2) of that direction, and the second step is x_scale / sqrt(S_2)."""
    first = {}
    for factor in (1.0, 1e3):      # f scaled by 1e3: a fixed step would move x 1e3 times as far
        p = BilevelProblem(lambda x, y, c=factor: c * problem().f(x, y), problem().g, X0, Y0)
        r = solve(p, method, max_iter=2, log_every=1, kkt="none", seed=0)
        one = solve(p, method, max_iter=1, kkt="none", seed=0)
        move = one.x - X0
        torch.testing.assert_close(move.pow(2).mean().sqrt(), torch.tensor(scale, dtype=D))
        d1 = move / -(scale / one.state.x_memory.sqrt())          # the first direction, recovered
        torch.testing.assert_close(one.state.x_memory, d1.pow(2).mean())
        d2_mean = r.state.x_memory - one.state.x_memory
        assert float(d2_mean) > 0
        torch.testing.assert_close((r.x - one.x).pow(2).mean().sqrt(),
                                   scale * d2_mean.sqrt() / r.state.x_memory.sqrt())
        first[factor] = move
    if method != "bome":   # (bome's direction grad f + lambda grad q is not linear in f: lambda depends on it)
        torch.testing.assert_close(first[1.0], first[1e3], rtol=1e-3, atol=1e-6)  # the first move is scale-free


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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["aid_bio", "vpbgd", "galet", "bome"])
@pytest.mark.parametrize("kwargs", [dict(seed=0), dict(dim_x=10, dim_y=8, cond=10.0, seed=3)])
def test_defaults_reach_the_closed_form_solution(method, kwargs):
    p = PROBLEMS["quadratic"](**kwargs)
    iters = {"aid_bio": 3000, "vpbgd": 5000, "galet": 1000, "bome": 20000}[method]
    r = solve(p, method, max_iter=iters, log_every=iters, kkt="none")
    assert float((r.x - p.info["x_star"]).norm()) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["aid_bio", "galet", "vpbgd", "bome"])
def test_coreset_reaches_its_optimum(method):
    r = solve(PROBLEMS["coreset"](seed=1), method, max_iter=2000, log_every=2000, kkt="none")
    assert r.final("upper_objective") < 1e-3


@pytest.mark.parametrize("cls, kwargs, message", [
    (BOME, dict(step_size=0.0), r"Invalid step_size: 0.0"),
    (BOME, dict(phi="hessian"), r"Invalid phi: 'hessian'"),
    (BOME, dict(inner_steps=0), r"Invalid inner_steps: 0"),
    (AIDBiO, dict(inner_step_size=-1.0), r"Invalid inner_step_size: -1.0"),
    (AIDBiO, dict(linear_solver="cg"), r"Invalid linear_solver: 'cg'"),
    (AIDBiO, dict(linear_solver={"method": "lu"}), r"Invalid linear_solver: \{'method': 'lu'\}"),
    (GALET, dict(linear_solver={"method": "cg", "iter": 5}), r"Invalid linear_solver: .*unexpected keyword"),
    (GALET, dict(linear_solver={"method": "neumann", "iters": 0}), r"Invalid iters: 0"),
    (VPBGD, dict(penalty=-2.0), r"Invalid penalty: -2.0"),
    (VPBGD, dict(penalty_warmup=-1), r"Invalid penalty_warmup: -1"),
    (GALET, dict(inner_steps=1.5), r"Invalid inner_steps: 1.5"),
])
def test_bad_hyperparameters_name_the_argument(cls, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cls(**kwargs)


def test_linear_solver_from_a_mapping_as_yaml_gives_it():
    assert AIDBiO(linear_solver={"method": "cg", "iters": 7}).linear_solver == ConjugateGradient(iters=7)
    assert GALET(linear_solver={"method": "neumann", "iters": 4, "step_size": 0.5}).linear_solver == Neumann(4, 0.5)


@pytest.mark.parametrize("method", ["bome", "aid_bio", "vpbgd", "galet"])
def test_cli_runs_on_coreset(method, capsys):
    assert main(["run", "--problem", "coreset", "--method", method, "--max-iter", "200", "--no-progress"]) == 0
    assert f"| {method} |" in capsys.readouterr().out


@pytest.mark.parametrize("cls", [AIDBiO, GALET])
def test_lower_step_that_raises_g_is_halved(cls):
    """grad_yy g = Q has largest eigenvalue 2.21: a step of 1.0 diverges (|1 - 2.21| > 1), 0.5 does not."""
    r = solve(problem(), cls(inner_step_size=1.0, inner_steps=5), max_iter=20, log_every=10, kkt="none")
    assert float(r.state.inner_step_size) == 0.5                 # halved once, then kept
    assert r.status is Status.COMPLETED and r.final("h") < 1e-3      # (x still moves; unguarded: inf)
    kept = solve(problem(), cls(inner_step_size=0.4, inner_steps=5), max_iter=20, log_every=10, kkt="none")
    assert float(kept.state.inner_step_size) == 0.4               # a stable step is never touched
