"""Oracles against closed forms and finite differences, and the speed features that must not
change answers: the torch.func back-end, oracle="compiled" with its fallback, and the flushing of
subnormal floats during a run."""
import pytest
import torch
from conftest import roundoff

from bilevel import PROBLEMS, solve
from bilevel.core.kkt import implicit_gradient, kkt_info, least_squares_multiplier
from bilevel.core.linear import ConjugateGradient, Neumann
from bilevel.core.oracles import COSTS, FORWARD_MODE, Autograd, Func, Oracle, _CompiledOrEager
from bilevel.run.solve import denormals_are_flushed

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


@pytest.mark.parametrize("back_end", ["autograd", "func"])
def test_lower_jacobian_products_match_the_jacobian_and_count_as_calls(back_end):
    """`Oracle.lower_jacobian`: J^T w and J v from graphs built once (autograd) or call by call
    (func) equal the closed-form Jacobian's, repeatedly at one point, and count one product each."""
    Q, B, x, y = quadratic_data(2)
    f, g = (lambda x, y: x.sum()), (lambda x, y: 0.5 * y @ Q @ y - y @ B @ x + (y ** 3).sum())
    oracle = Oracle(Autograd(f, g) if back_end == "autograd" else Func(f, g))
    J_x, J_y = -B, Q + torch.diag(6 * y)           # Jacobian of grad_y g = Q y - B x + 3 y^2
    vjp, jvp = oracle.lower_jacobian(x, y)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        w, dx, dy = (torch.randn(n, generator=gen, dtype=D) for n in (3, 4, 3))
        jx, jy = vjp(w)
        torch.testing.assert_close(jx, J_x.T @ w)
        torch.testing.assert_close(jy, J_y.T @ w)
        torch.testing.assert_close(jvp(dx, dy), J_x @ dx + J_y @ dy)
    assert oracle.counts["n_hvp"] == 6


def test_lower_jacobian_where_grad_y_g_does_not_depend_on_x_or_on_y():
    """J_x = 0 (g without x) and J_y = 0 (g linear in y): zeros, not errors."""
    y, x = torch.tensor([1.0, -2.0], dtype=D), torch.tensor([0.5, 3.0], dtype=D)
    w, dx, dy = torch.tensor([1.0, 2.0], dtype=D), torch.tensor([-1.0, 4.0], dtype=D), torch.tensor([2.0, 1.0], dtype=D)
    vjp, jvp = Oracle(Autograd(lambda x, y: x.sum(), lambda x, y: 0.5 * (y ** 2).sum())).lower_jacobian(x, y)
    assert torch.equal(vjp(w)[0], torch.zeros(2, dtype=D)) and torch.equal(vjp(w)[1], w)
    assert torch.equal(jvp(dx, dy), dy)
    vjp, jvp = Oracle(Autograd(lambda x, y: x.sum(), lambda x, y: (x * y).sum())).lower_jacobian(x, y)
    assert torch.equal(vjp(w)[0], w) and torch.equal(vjp(w)[1], torch.zeros(2, dtype=D))
    assert torch.equal(jvp(dx, dy), dx)


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


COUNTED_METHODS = ["grad_f", "grad_g", "grad_g_y", "grad_g_x", "h_and_grad", "vjp_grad_y_g", "jvp_grad_y_g", "hvp_f",
           "hvp_h", "hvp_inner_grad_y_g"]


def test_every_counted_method_has_a_cost():
    assert set(COUNTED_METHODS) | {"f", "g"} == set(COSTS)


@pytest.mark.parametrize("name", ["synthetic-nc", "toy-cleaning"])
def test_func_back_end_equals_autograd_back_end(name):
    problem = PROBLEMS[name](seed=0)
    gen = torch.Generator().manual_seed(1)
    x = problem.x0 + 0.3 * torch.randn(problem.x0.shape, generator=gen, dtype=problem.x0.dtype)
    y = problem.y0 + 0.3 * torch.randn(problem.y0.shape, generator=gen, dtype=problem.y0.dtype)
    vx, vy = torch.randn_like(x), torch.randn_like(y)
    args = {"grad_f": (x, y), "grad_g": (x, y), "grad_g_y": (x, y), "grad_g_x": (x, y), "h_and_grad": (x, y),
            "vjp_grad_y_g": (x, y, vy), "jvp_grad_y_g": (x, y, vx, vy), "hvp_f": (x, y, vx, vy),
            "hvp_h": (x, y, vx, vy), "hvp_inner_grad_y_g": (x, y, vy, vx, vy)}
    autograd, func = Oracle(Autograd(problem.f, problem.g)), Oracle(Func(problem.f, problem.g))
    tol = roundoff(operations=x.numel() + y.numel())       # one pass of sums over the variables
    for method in COUNTED_METHODS:
        a, b = getattr(autograd, method)(*args[method]), getattr(func, method)(*args[method])
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(v, u, rtol=tol, atol=tol, msg=method)
    assert func.snapshot() == autograd.snapshot()


@pytest.mark.slow
@pytest.mark.parametrize("oracle", ["func", "compiled"])
def test_a_run_on_the_func_back_ends_equals_the_autograd_run(oracle):
    """The back-end serves the whole run: steps, logged rows (KKT by least squares) and the final row."""
    problem = PROBLEMS["quadratic"](seed=0)
    eager = solve(problem, "pgdqp", max_iter=40, log_every=10, seed=0, kkt="least_squares")
    other = solve(problem, "pgdqp", max_iter=40, log_every=10, seed=0, kkt="least_squares", oracle=oracle)
    assert "ran uncompiled" not in other.message
    tol = roundoff(operations=40 * 10)
    torch.testing.assert_close(other.x, eager.x, rtol=tol, atol=tol)
    assert other.history["oracle_calls"] == eager.history["oracle_calls"]
    for column in ("f", "h", "kkt_stationarity"):
        assert other.history[column] == pytest.approx(eager.history[column], rel=1e3 * tol, abs=tol)


def test_compile_falls_back_and_says_why(monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler found")
        return compiled
    monkeypatch.setattr(torch, "compile", broken_compile)
    problem = PROBLEMS["quadratic"](seed=0)
    with pytest.warns(RuntimeWarning, match=r"oracle='compiled': grad_f runs uncompiled \(RuntimeError: no C\+\+ comp"):
        result = solve(problem, "sgf", max_iter=20, log_every=10, oracle="compiled")
    assert "ran uncompiled: grad_f: RuntimeError: no C++ compiler found" in result.message
    eager = solve(problem, "sgf", max_iter=20, log_every=10)
    tol = roundoff(operations=20)
    torch.testing.assert_close(result.x, eager.x, rtol=tol, atol=tol)


def test_denormals_are_flushed_during_a_run_and_restored_after():
    torch.set_flush_denormal(False)
    seen = []
    problem = PROBLEMS["quadratic"](seed=0)
    solve(problem, "sgf", max_iter=3, callback=lambda state, aux: seen.append(denormals_are_flushed()))
    assert seen == [True, True, True] and not denormals_are_flushed()
    solve(problem, "sgf", max_iter=2, flush_denormal=False,
          callback=lambda state, aux: seen.append(denormals_are_flushed()))
    assert seen[3:] == [False, False]
    tiny = torch.tensor([1e-310], dtype=torch.float64)
    assert float(tiny * 1.0) != 0.0                          # the process's setting is left as it was
    torch.set_flush_denormal(True)
    try:
        solve(problem, "sgf", max_iter=2)
        assert denormals_are_flushed()                       # restored to the caller's choice
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.slow
def test_compiled_run_keeps_forward_mode_products_eager():
    """torch 2.13's inductor crashes the process (segmentation fault) on the compiled jvp of
    synthetic-sc's grad f, whose constants have zero tangents: forward-mode products stay eager."""
    problem = PROBLEMS["synthetic-sc"](seed=0)
    back_end = Func(problem.f, problem.g, compile=True)
    assert not any(isinstance(back_end.pure[name], _CompiledOrEager) for name in FORWARD_MODE)
    eager = solve(problem, "pgdqp", max_iter=5, log_every=5, seed=0)
    compiled = solve(problem, "pgdqp", max_iter=5, log_every=5, seed=0, oracle="compiled")   # hvp_f, hvp_h at the start
    assert "ran uncompiled" not in compiled.message
    tol = roundoff(operations=5 * 20)
    torch.testing.assert_close(compiled.x, eager.x, rtol=tol, atol=tol)


def test_an_oracle_object_is_used_for_the_run_and_its_counts_reset():
    problem = PROBLEMS["quadratic"](seed=0)
    oracle = Oracle(Func(problem.f, problem.g))
    oracle.grad_f(problem.x0, problem.y0)
    r = solve(problem, "sgf", max_iter=10, log_every=10, oracle=oracle)
    assert oracle.snapshot()["n_grad_f"] == 10 and r.history["n_grad_f"][-1] == 10


def test_the_oracle_from_the_command_line_and_a_sweep_config(tmp_path, capsys):
    """--oracle and a config's `oracle:` reach solve: the func run's answer is the autograd run's
    (float64), the back-end is a configuration of its own in tables, and a wrong name is refused
    before anything runs."""
    from bilevel.cli import store
    from bilevel.cli.main import main
    base = ["run", "--problem", "synthetic-sc", "--problem-arg", "dim=4", "--method", "pgdqp", "--max-iter", "30",
            "--log-every", "10", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--oracle", "func", "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    a, f = store.read_answer(tmp_path / "a"), store.read_answer(tmp_path / "f")
    torch.testing.assert_close(f["x"], a["x"], rtol=1e-8, atol=1e-10)
    assert main(["table", str(tmp_path / "f"), "--metrics", "f"]) == 0
    assert '{"oracle": "func"}' in capsys.readouterr().out
    config = tmp_path / "sweep.yaml"
    config.write_text("max_iter: 20\nlog_every: 10\noracle: func\nproblems: {synthetic-sc: {dim: 4}}\n"
                      "methods: {pgdqp: {}}\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    capsys.readouterr()
    config.write_text("max_iter: 20\noracle: funk\nproblems: {synthetic-sc: {}}\nmethods: {pgdqp: {}}\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "t"), "--no-progress"]) != 0
    assert "oracle (line 2): 'funk' (expected one of autograd, func, compiled); did you mean 'func'?" in \
        capsys.readouterr().err


def small_minibatch_cleaning():
    return PROBLEMS["hyper-cleaning"](minibatch=True, n_train=120, n_val=60, n_test=60, pca=12, seed=1,
                                      retrain_steps=5, dtype=torch.float64)


@pytest.mark.parametrize("method", ["soba", "saba"])
def test_func_back_end_on_minibatches_follows_autograd(method):
    """oracle="func" on minibatches: one back-end built for the run, every batch an argument of its
    derivatives (`Func.on`); soba takes its fused step there (uncompiled), saba the oracle's calls."""
    problem = small_minibatch_cleaning()
    runs = {oracle: solve(problem, method, max_iter=30, log_every=10, batch_size=16, seed=0, kkt="none",
                          verify=False, oracle=oracle) for oracle in ("autograd", "func")}
    tol = roundoff(operations=30 * 100)
    torch.testing.assert_close(runs["func"].x, runs["autograd"].x, rtol=tol, atol=tol)
    torch.testing.assert_close(runs["func"].y, runs["autograd"].y, rtol=tol, atol=tol)
    assert runs["func"].history["oracle_calls"] == runs["autograd"].history["oracle_calls"]
    for column in ("f", "g", "h", "kkt_stationarity", "step_size"):
        assert runs["func"].history[column] == pytest.approx(runs["autograd"].history[column], rel=tol, abs=tol)


def test_fused_step_is_one_oracle_call_of_two_derivatives():
    problem = small_minibatch_cleaning()
    seen = []
    eager = solve(problem, "soba", max_iter=12, log_every=4, batch_size=16, seed=0, kkt="none", verify=False)
    fused = solve(problem, "soba", max_iter=12, log_every=4, batch_size=16, seed=0, kkt="none", verify=False,
                  oracle="func", callback=lambda state, aux: seen.append(type(aux.diagnostics["h"])))
    assert fused.history["oracle_calls"] == eager.history["oracle_calls"]
    assert fused.history["n_grad_f"] == eager.history["n_grad_f"] and fused.history["n_hvp"] == eager.history["n_hvp"]
    assert set(seen) == {torch.Tensor}


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"step_size": 0.5, "inner_step_size": 0.05, "schedule": "decreasing"}])
def test_compiled_soba_on_minibatches_compiles_once_and_follows_eager(options, monkeypatch):
    """oracle="compiled" on minibatches: soba's whole step is one graph (traced by make_fx, compiled
    without dynamo) whose inputs include the batches, so a run of 30 batches traces it once, and
    dynamo compiles vjp_grad_y_g of the curvature estimate once, where compiling per batch would
    make one per batch. The iterates are eager's up to round-off."""
    from torch._dynamo.utils import counters

    from bilevel.core import oracles
    torch._dynamo.reset()
    counters.clear()
    traces, trace = [], oracles._Traced._compile
    monkeypatch.setattr(oracles._Traced, "_compile", lambda self, *a: traces.append(1) or trace(self, *a))
    problem = small_minibatch_cleaning()
    args = {"options": options, "max_iter": 30, "log_every": 10, "batch_size": 16, "seed": 0, "kkt": "none",
            "verify": False}
    compiled = solve(problem, "soba", oracle="compiled", **args)
    graphs = counters["stats"]["unique_graphs"]
    eager = solve(problem, "soba", **args)
    assert "ran uncompiled" not in compiled.message
    assert len(traces) == 1
    assert graphs == (1 if not options else 0)          # fixed steps: no curvature estimate
    tol = roundoff(operations=30 * 100)
    torch.testing.assert_close(compiled.x, eager.x, rtol=tol, atol=tol)
    torch.testing.assert_close(compiled.y, eager.y, rtol=tol, atol=tol)
    assert compiled.history["oracle_calls"] == eager.history["oracle_calls"]
    for column in ("f", "h", "kkt_stationarity", "step_size"):
        assert compiled.history[column] == pytest.approx(eager.history[column], rel=tol, abs=tol)


@pytest.mark.slow
def test_skinny_products_are_computed_transposed_with_the_same_values():
    """SkinnyProducts rewrites the narrow products of a compiled graph (C = A B with at most 16
    columns, fewer than its rows) as (B^T A^T)^T, and leaves the others: the values are the
    eager ones up to round-off."""
    from bilevel.core.oracles import _compile_options
    torch._dynamo.reset()
    skinny = type(_compile_options()["post_grad_custom_post_pass"])()
    gen = torch.Generator().manual_seed(0)
    a, w, wide = (torch.randn(shape, generator=gen) for shape in ((64, 96), (96, 10), (96, 40)))
    bias, g = torch.randn(10, generator=gen), torch.randn(64, 10, generator=gen)

    def products(a, w, wide, bias, g):
        return a @ w, torch.addmm(bias, a, w), a.T @ g, a @ wide

    compiled = torch.compile(products, dynamic=False, options={"post_grad_custom_post_pass": skinny,
                                                               "fx_graph_cache": False})
    got, expected = compiled(a, w, wide, bias, g), products(a, w, wide, bias, g)
    assert skinny.rewritten == 3                      # a @ w, addmm, a.T @ g; not a @ wide (40 columns)
    tol = roundoff(torch.float32, operations=96)
    for u, v in zip(got, expected):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


def test_only_a_compiled_back_end_of_one_process_fuses_steps():
    """A data-parallel back-end reduces every call over the ranks, so a fused step (one call of the
    local derivatives) would sum nothing: Oracle.fuses is False there, even around compiled ones."""
    from bilevel.core.distributed import Reduced
    problem = PROBLEMS["quadratic"](seed=0)
    compiled = Func(problem.f, problem.g, compile=True)
    reduced = Reduced.__new__(Reduced)
    reduced.local = compiled
    assert Oracle(compiled).fuses
    assert not Oracle(reduced).fuses
    assert not Oracle(Func(problem.f, problem.g)).fuses and not Oracle(Autograd(problem.f, problem.g)).fuses


def test_a_fused_step_that_does_not_compile_runs_eagerly_and_says_why(monkeypatch):
    import torch._inductor.compile_fx

    def broken_compile(graph, inputs, **kwargs):
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", broken_compile)
    problem = small_minibatch_cleaning()
    args = {"max_iter": 12, "log_every": 4, "batch_size": 16, "seed": 0, "kkt": "none", "verify": False}
    with pytest.warns(RuntimeWarning, match=r"oracle='compiled': fused step runs uncompiled \(RuntimeError: no C"):
        result = solve(problem, "soba", oracle="compiled", **args)
    assert "ran uncompiled: " in result.message and "fused step: RuntimeError: no C++ compiler found" in result.message
    eager = solve(problem, "soba", **args)
    tol = roundoff(operations=12 * 100)
    torch.testing.assert_close(result.x, eager.x, rtol=tol, atol=tol)
