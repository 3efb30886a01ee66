"""The verification's upper-level check and re-solve, measured on problems of our own.

A. False successes: every registered method with its defaults (`solve(problem, method,
   log_every=1000, kkt="none")`, max_iter 1000) on problems whose x* is known in closed form or
   to machine precision here; a success whose x is more than 1e-2 (relative, max over
   coordinates) from x* is false. "old rule" is the verdict without the upper-level check and
   the re-solve's certificate (y_distance <= 1e-2 and the curvature check), as before.
       duopoly-free   leader (20 - 2(x + y) - 4) x, follower the same in y, x in [0, 10],
                      y in [0, 100], x0 = 0.5: x* = 4, y* = 2
       duopoly-cap    the same with y in [0, 1]: x* = 3.5 (follower on its bound)
       exp-lower      g = sum(exp(y) - x y) (y* = log x), f = sum(w (y - 1)^2) + |x|^2 / 4
                      + sum(x y), w = (1, 2, 3), x in [0.05, 10], x0 = 2: x* by Brent's method
       quadratic      g = y^T Q y / 2 - y^T B x, f = |y - c|^2 / 2 + |x - d|^2 / 2 + 0.1 y^T E x
                      (seed 11, x in R^4, y in R^6), x0 = 0: x* by a linear solve
B. The ill-conditioned lower level of issue 21: per-feature log L2 weights of a logistic
   regression (breast_cancer, `feature_weight_decay`), pgdqp with schedule="constant",
   step_size=100, lower_step_size=0.1, 1000 iterations; at its x the re-solve before (L-BFGS
   alone, to eps^(3/4) max(1, |grad|), 1000 iterations) and now (`bilevel.run.verify.resolve`),
   against Newton's method with the dense Hessian from scipy's L-BFGS-B answer.
C. Cost: the verification after 200 iterations of pgdqp on hyper-cleaning (mnist5k, linear).

    OMP_NUM_THREADS=1 python benchmarks/verify_upper_check.py [--parts ABC] [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import math
import time

import scipy.optimize
import torch

import bilevel
from bilevel.cli.report import command, format_table, machine, update_section
from bilevel.core.lower import minimize
from bilevel.core.oracles import Autograd, Oracle
from bilevel.problems.hpo import feature_weight_decay
from bilevel.run.verify import LOWER_TOL, resolve, verify

D = torch.float64


def duopoly(K: float) -> bilevel.BilevelProblem:
    def margin(x, y):
        return 16.0 - 2.0 * (x.sum() + y.sum())
    return bilevel.BilevelProblem(lambda x, y: -margin(x, y) * x.sum(), lambda x, y: -margin(x, y) * y.sum(),
                                  torch.tensor([0.5], dtype=D), torch.tensor([0.0], dtype=D),
                                  x_bounds=(0.0, 10.0), y_bounds=(0.0, K))


def exp_lower() -> tuple[bilevel.BilevelProblem, torch.Tensor]:
    w = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    problem = bilevel.BilevelProblem(lambda x, y: (w * (y - 1) ** 2).sum() + 0.25 * (x ** 2).sum() + (x * y).sum(),
                                     lambda x, y: (torch.exp(y) - x * y).sum(), torch.full((3,), 2.0, dtype=D),
                                     torch.zeros(3, dtype=D), x_bounds=(0.05, 10.0))

    def derivative(x, wi):       # d/dx of wi (log x - 1)^2 + x^2 / 4 + x log x
        return 2 * wi * (math.log(x) - 1) / x + 0.5 * x + math.log(x) + 1
    x_star = torch.tensor([scipy.optimize.brentq(derivative, 0.05, 10.0, args=(float(wi),), xtol=1e-14)
                           for wi in w], dtype=D)
    return problem, x_star


def quadratic(seed: int = 11, n: int = 4, m: int = 6) -> tuple[bilevel.BilevelProblem, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, m, generator=gen, dtype=D)
    Q = A @ A.T + torch.eye(m, dtype=D)
    B, E = torch.randn(m, n, generator=gen, dtype=D), torch.randn(m, n, generator=gen, dtype=D)
    c, d = torch.randn(m, generator=gen, dtype=D), torch.randn(n, generator=gen, dtype=D)
    problem = bilevel.BilevelProblem(
        lambda x, y: 0.5 * ((y - c) ** 2).sum() + 0.5 * ((x - d) ** 2).sum() + 0.1 * y @ E @ x,
        lambda x, y: 0.5 * y @ Q @ y - y @ B @ x, torch.zeros(n, dtype=D), torch.zeros(m, dtype=D))
    M = torch.linalg.solve(Q, B)                     # y*(x) = M x; F(x) = f(x, M x) is quadratic in x
    F = lambda x: problem.f(x, M @ x)
    hessian = torch.func.hessian(F)(torch.zeros(n, dtype=D))
    return problem, torch.linalg.solve(hessian, -torch.func.grad(F)(torch.zeros(n, dtype=D)))


def part_a() -> str:
    problems = {"duopoly-free": (duopoly(100.0), torch.tensor([4.0], dtype=D)),
                "duopoly-cap": (duopoly(1.0), torch.tensor([3.5], dtype=D)),
                "exp-lower": exp_lower(), "quadratic": quadratic()}
    rows, counts = [], {name: [0, 0, 0, 0] for name in problems}     # successes, false, old-rule ones, old false
    for name, (problem, x_star) in problems.items():
        for method in sorted(bilevel.SOLVERS):
            start = time.perf_counter()
            r = bilevel.solve(problem, method, log_every=1000, kkt="none", seed=0)
            error = float(((r.x - x_star).abs() / x_star.abs().clamp(min=1e-12)).max())
            v = r.verification
            old = (r.status.name in ("COMPLETED", "CONVERGED", "STOPPED") and v["y_distance"] <= LOWER_TOL
                   and v["curvature_passed"])
            c = counts[name]
            c[0] += r.success
            c[1] += r.success and error > 1e-2
            c[2] += old
            c[3] += old and error > 1e-2
            rows.append({"problem": name, "method": method, "rel. error of x": error, "success": r.success,
                         "old rule": old, "upper_relative": v["upper_relative"], "y_distance": v["y_distance"],
                         "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
    summary = [{"problem": n, "successes": c[0], "false successes": c[1], "old-rule successes": c[2],
                "old-rule false successes": c[3]} for n, c in counts.items()]
    return (format_table(summary, list(summary[0])) + "\n\nPer run:\n\n"
            + format_table(rows, ["problem", "method", "rel. error of x", "success", "old rule", "upper_relative",
                                  "y_distance", "seconds"]))


def dense_newton(g, x, y):
    for _ in range(30):
        step = torch.linalg.solve(torch.func.hessian(g, argnums=1)(x, y), -torch.func.grad(g, argnums=1)(x, y))
        y = y + step
        if float(step.norm()) < 1e-13 * float(y.norm()):
            break
    return y


def part_b() -> str:
    p = feature_weight_decay(seed=0, honest_metric=False)
    r = bilevel.solve(p, "pgdqp", max_iter=1000, log_every=1000, kkt="none", verify=False,
                      options=dict(schedule="constant", step_size=100, lower_step_size=0.1))
    x = r.x

    def fun(v):
        v = torch.tensor(v, dtype=D)
        return float(p.g(x, v)), torch.func.grad(p.g, argnums=1)(x, v).numpy()
    scipy_y = torch.tensor(scipy.optimize.minimize(fun, r.y.numpy(), jac=True, method="L-BFGS-B", options=dict(
        gtol=1e-10, ftol=0, maxiter=100000, maxfun=100000)).x)
    reference = dense_newton(p.g, x, scipy_y)
    hessian = torch.func.hessian(p.g, argnums=1)(x, reference)
    eig = torch.linalg.eigvalsh(hessian)
    rows = []
    oracle = Oracle(Autograd(p.f, p.g, p.y_bounds))
    value_and_grad = oracle.lower_objective(x)
    scale = float(value_and_grad(r.y)[1].norm())
    for name, run in (("before: L-BFGS alone", lambda: minimize(value_and_grad, r.y, max_iter=1000,
                                                                   tol=torch.finfo(D).eps ** 0.75 * max(1.0, scale))),
                      ("now: resolve (L-BFGS 100, Newton-CG)", lambda: resolve(p, oracle, x, r.y, 100)),
                      ("scipy L-BFGS-B gtol 1e-10", None)):
        oracle.reset()
        start = time.perf_counter()
        y = run().y if run else scipy_y
        seconds = time.perf_counter() - start
        rows.append({"re-solve": name, "norm of grad_y g": float(torch.func.grad(p.g, argnums=1)(x, y).norm()),
                     "rel. distance to y_ref": float((y - reference).norm() / reference.norm()),
                     "upper_value": float(p.f(x, y)), "oracle calls": oracle.snapshot()["oracle_calls"] if run else "",
                     "seconds": seconds if run else ""})
        print(rows[-1], flush=True)
    check = verify(p, Oracle(Autograd(p.f, p.g, p.y_bounds)), x, r.y)
    return (f"min log-weight {float(x.min()):.1f}; grad_yy g at y_ref: eigenvalues {float(eig.min()):.3g} .. "
            f"{float(eig.max()):.3g}; f(x, y_ref) = {float(p.f(x, reference)):.6f} (y_ref: dense Newton).\n\n"
            + format_table(rows, list(rows[0]))
            + f"\n\nverify: re_solve_converged {check['re_solve_converged']}, re_solve_step "
              f"{check['re_solve_step']:.3g} <= re_solve_tol {check['re_solve_tol']:.3g}, upper_value "
              f"{check['upper_value']:.6f}; cost {check['cost']['oracle_calls']} oracle calls, "
              f"{check['cost']['time']:.2f} s")


def part_c() -> str:
    p = bilevel.PROBLEMS["hyper-cleaning"](seed=0)
    start = time.perf_counter()
    r = bilevel.solve(p, "pgdqp", max_iter=200, log_every=200, kkt="none", verify=False)
    run_seconds = time.perf_counter() - start
    check = verify(p, Oracle(Autograd(p.f, p.g, p.y_bounds)), r.x, r.y)
    oracle = Oracle(Autograd(p.f, p.g, p.y_bounds))
    value_and_grad = oracle.lower_objective(r.x)
    start = time.perf_counter()
    minimize(value_and_grad, r.y, max_iter=1000,
             tol=torch.finfo(r.y.dtype).eps ** 0.75 * max(1.0, float(value_and_grad(r.y)[1].norm())))
    before = time.perf_counter() - start
    cost = check["cost"]
    return (f"run (200 iterations, no logging): {run_seconds:.2f} s, {r.history['oracle_calls'][-1]:.0f} oracle calls. "
            f"verify: {cost['time']:.2f} s, {cost['oracle_calls']} calls ({cost['n_grad_g']} gradients of g, "
            f"{cost['n_hvp']} Hessian-vector products); re-solve certified {check['re_solve_converged']} in "
            f"{check['re_solve_iterations']} iterations. The re-solve as before (L-BFGS alone): {before:.2f} s, "
            f"{oracle.snapshot()['oracle_calls']} calls (the curvature check's 80 products come on top of it).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ABC")
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = [f"Command: `{command()}`  ", f"Machine: {machine()}, OMP_NUM_THREADS=1 (shared with other jobs "
                "while measured: seconds are indicative only)", ""]
    for part, run in (("A", part_a), ("B", part_b), ("C", part_c)):
        if part in args.parts:
            sections += [f"**{part}.**", "", run(), ""]
    text = "\n".join(["## The verification's upper-level check and certified re-solve (issue 21)", "",
                      "See benchmarks/verify_upper_check.py's docstring for the problems.", ""] + sections)
    print(text)
    if args.results:
        update_section(args.results, "verify-upper-check", text)


if __name__ == "__main__":
    main()
