"""A user's own problem: variables as dicts of parameters or modules, builders named by module
path in the CLI and sweeps, saved answers, continued runs, checkpoints that know their data,
and the hypergradient of the honest objective."""
import sys
import textwrap

import pytest
import torch
from conftest import roundoff
from torch.func import functional_call

import bilevel
from bilevel import PROBLEMS, BilevelProblem, solve
from bilevel.cli.main import main
from bilevel.cli.store import read_answer, read_results
from bilevel.core.flat_module import FlatModule

D = torch.float64


def regression_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    A, Av = torch.randn(30, 3, generator=gen, dtype=D), torch.randn(15, 3, generator=gen, dtype=D)
    return A, A.sum(1, keepdim=True) + 0.1, Av, Av.sum(1, keepdim=True)


def network():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def dict_problem(net, y0):
    """x: the log of an L2 weight on the network's parameters; y: the parameters as a dict."""
    A, b, Av, bv = regression_data()

    def g(x, params):
        fit = ((functional_call(net, params, (A,)) - b) ** 2).mean()
        return fit + torch.exp(x).sum() * sum((p ** 2).sum() for p in params.values())

    def f(x, params):
        return ((functional_call(net, params, (Av,)) - bv) ** 2).mean()
    return BilevelProblem(f, g, torch.full((1,), -3.0, dtype=D), y0)


def flat_problem(net):
    """The same problem on one flat vector, written with FlatModule."""
    A, b, Av, bv = regression_data()
    flat = FlatModule(net)
    g = lambda x, y: ((flat(y, A) - b) ** 2).mean() + torch.exp(x).sum() * (y ** 2).sum()
    f = lambda x, y: ((flat(y, Av) - bv) ** 2).mean()
    return BilevelProblem(f, g, torch.full((1,), -3.0, dtype=D), flat.flatten())


@pytest.mark.slow
@pytest.mark.parametrize("method, options", [("pgdqp", {"schedule": "diminishing"}), ("bome", {}), ("aid_bio", {})])
def test_parameters_as_a_dict_give_the_flat_problems_iterates(method, options):
    """The layouts are the solver-independent part under test; pgdqp runs "diminishing" here because
    its default's Newton solves on this network's nearly singular grad_yy g (iterations 3-4) amplify
    the order of sums far beyond round-off."""
    net = network()
    structured = solve(dict_problem(net, dict(net.named_parameters())), method, max_iter=30, log_every=10, seed=0,
                       options=options)
    flat = solve(flat_problem(net), method, max_iter=30, log_every=10, seed=0, options=options)
    assert isinstance(structured.y, dict) and list(structured.y) == [n for n, _ in net.named_parameters()]
    got = torch.cat([v.reshape(-1) for v in structured.y.values()])
    # the same arithmetic up to the order of a few sums (functional_call on a dict, views of one
    # vector): round-off through 30 iterations of up to 100 dependent products
    rtol = roundoff(operations=30 * 100)
    torch.testing.assert_close(got, flat.y, rtol=rtol, atol=1e-2 * rtol)
    torch.testing.assert_close(structured.x, flat.x, rtol=rtol, atol=1e-2 * rtol)
    assert structured.history["f"] == pytest.approx(flat.history["f"], rel=rtol, abs=1e-2 * rtol)
    assert isinstance(structured.verification["y_resolved"], dict)
    # the caller's module is left as it was
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(net.parameters()), FlatModule(network()).flatten())


def test_a_module_comes_back_as_a_module():
    net = network()
    r = solve(dict_problem(net, net), "pgdqp", max_iter=20, log_every=20, seed=0)
    assert isinstance(r.y, torch.nn.Sequential) and r.y is not net
    assert not any(p.requires_grad for p in r.y.parameters())               # an answer, not a model in training
    assert all(p.requires_grad for p in net.parameters())                   # the given module is left as it was
    by_dict = solve(dict_problem(net, dict(net.named_parameters())), "pgdqp", max_iter=20, log_every=20, seed=0)
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(r.y.parameters()),
                               torch.cat([v.reshape(-1) for v in by_dict.y.values()]), rtol=0, atol=0)


def test_bad_structured_variables_are_named():
    net = network()
    with pytest.raises(TypeError, match=r"Invalid y0: list \(expected a torch.Tensor, a dict of tensors"):
        dict_problem(net, [p for p in net.parameters()])
    with pytest.raises(TypeError, match=r"Invalid y0\['w'\]: dtype torch.int64"):
        BilevelProblem(lambda x, y: y["w"].sum() + x.sum(), lambda x, y: (y["w"] ** 2).sum(), torch.zeros(1, dtype=D),
                       {"w": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"Invalid y_bounds: names \['v'\] \(expected \['w'\]\)"):
        BilevelProblem(lambda x, y: y["w"].sum() + x.sum(), lambda x, y: (y["w"] ** 2).sum(), torch.zeros(1, dtype=D),
                       {"w": torch.zeros(2, dtype=D)}, y_bounds=({"v": 0.0}, None))


def test_bounds_in_the_structure_of_a_dict():
    problem = BilevelProblem(lambda x, y: ((y["a"] - 3) ** 2).sum() + ((y["b"] + 3) ** 2).sum() + (x ** 2).sum(),
                             lambda x, y: ((y["a"] - x) ** 2).sum() + ((y["b"] - x) ** 2).sum(),
                             torch.zeros(2, dtype=D), {"a": torch.zeros(2, dtype=D), "b": torch.zeros(1, dtype=D)},
                             y_bounds=({"a": -1.0, "b": -0.5}, {"a": 1.0, "b": 0.5}))
    r = solve(problem, "pgdqp", max_iter=200, log_every=200)
    assert float(r.y["a"].max()) <= 1.0 and float(r.y["b"].min()) >= -0.5


MODULE = textwrap.dedent('''
    import torch
    import bilevel

    def build(seed=0, scale=1.0):
        gen = torch.Generator().manual_seed(seed)
        target = torch.randn(3, generator=gen, dtype=torch.float64)
        return bilevel.BilevelProblem(lambda x, y: ((y - target) ** 2).sum() + (x ** 2).sum(),
                                      lambda x, y: scale * ((y - x) ** 2).sum(),
                                      torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                                      name="users-problem", info={"seed": seed, "scale": scale})
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "users_problems.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield "users_problems:build"
    sys.modules.pop("users_problems", None)


@pytest.mark.slow
def test_a_builder_named_by_module_path_runs_sweeps_and_plots(user_module, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--problem", user_module, "--method", "pgdqp", "--max-iter", "300", "--log-every", "100",
                 "--problem-arg", "scale=2.0", "--out", str(out), "--no-progress"]) == 0
    answer = read_answer(out)
    import users_problems
    direct = solve(users_problems.build(seed=0, scale=2.0), "pgdqp", max_iter=300, log_every=100, seed=0)
    assert answer["status"] == "COMPLETED" and answer["success"] == direct.success
    assert torch.equal(answer["x"], direct.x) and torch.equal(answer["y"], direct.y)
    assert answer["verification"]["upper_value"] == direct.verification["upper_value"]
    config = tmp_path / "sweep.yaml"
    config.write_text(f"max_iter: 30\nlog_every: 10\nseeds: 2\nproblems:\n  {user_module}: {{scale: [1.0, 3.0]}}\n"
                      f"methods:\n  pgdqp: {{}}\n  sgf: {{}}\nplot: {{metrics: [f]}}\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "sw"), "-j", "2", "--no-progress"]) == 0
    frame = read_results(tmp_path / "sw")
    assert len(frame["run_id"].unique()) == 8 and set(frame["title"]) == {"users-problem"}
    capsys.readouterr()
    assert main(["table", str(tmp_path / "sw"), "--metrics", "f,verified_f"]) == 0
    assert f"| {user_module} {{\"scale\": 3.0}} | sgf |" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "sw"), "--metric", "f", "--x", "time", "--out", str(tmp_path / "png")]) == 0
    assert len(list((tmp_path / "png").glob("plot_users_problems-build_scale=*_f_time.png"))) == 2


@pytest.mark.parametrize("name, message", [
    ("no_such_module:build", "Invalid --problem: 'no_such_module:build' (cannot import 'no_such_module'"),
    ("users_problems:missing", "Invalid --problem: 'users_problems:missing' (module 'users_problems' has no function"),
])
def test_module_paths_that_do_not_resolve(user_module, name, message, capsys):
    assert main(["run", "--problem", name, "--method", "pgdqp", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"bilevel: error: {message}")


def test_a_checkpoint_of_another_problems_data_is_refused(tmp_path):
    """Two problems that differ only in data (or in a builder argument) never share a checkpoint."""
    path = tmp_path / "ck.pt"
    solve(PROBLEMS["synthetic-sc"](cond=10.0), "pgdqp", max_iter=30, checkpoint=path)
    with pytest.raises(ValueError, match=r"written by another problem: builder argument cond is 10.0 there, 1000.0 here"):
        solve(PROBLEMS["synthetic-sc"](cond=1000.0), "pgdqp", max_iter=30, checkpoint=path)

    def anonymous(target):       # no builder arguments to tell them apart: only the data differ
        return BilevelProblem(lambda x, y: ((y - target) ** 2).sum(), lambda x, y: ((y - x) ** 2).sum(),
                              torch.zeros(2, dtype=D), torch.zeros(2, dtype=D))
    path = tmp_path / "other.pt"
    solve(anonymous(torch.ones(2, dtype=D)), "sgf", max_iter=30, checkpoint=path)
    with pytest.raises(ValueError, match=r"another problem: its data differ \(f\(x0, y0\) is 2.0 there, 8.0 here\)"):
        solve(anonymous(2 * torch.ones(2, dtype=D)), "sgf", max_iter=30, checkpoint=path)
    resumed = solve(anonymous(torch.ones(2, dtype=D)), "sgf", max_iter=60, checkpoint=path)
    assert "continued from the checkpoint" in resumed.message and "at iteration 30" in resumed.message


def test_a_result_continues_to_the_iterates_of_one_longer_run():
    p = PROBLEMS["quadratic"](seed=0)
    whole = solve(p, "pgdqp", max_iter=200, log_every=30, seed=2)
    first = solve(p, "pgdqp", max_iter=90, log_every=30, seed=2)
    rest = solve(p, "pgdqp", max_iter=200, log_every=30, seed=2, init=first)
    assert torch.equal(whole.x, rest.x) and torch.equal(whole.state.velocity[0], rest.state.velocity[0])
    assert whole.history["iter"] == rest.history["iter"] and whole.history["oracle_calls"] == rest.history["oracle_calls"]
    assert "continued from the result given as init at iteration 90" in rest.message
    with pytest.raises(ValueError, match=r"Invalid init: the result given was produced by another run \(solver"):
        solve(p, "sgf", max_iter=200, log_every=30, seed=2, init=first)
    with pytest.raises(TypeError, match=r"Invalid init: 3"):
        solve(p, "pgdqp", init=3)


def test_hypergradient_solves_the_lower_level_first():
    """quadratic: y*(x) = Q^-1 B x, so the gradient of x -> f(x, y*(x)) is known through autograd."""
    p = PROBLEMS["quadratic"](seed=2, cond=20.0)
    Q, B = p.g.keywords["Q"], p.g.keywords["B"]
    x = p.x0 + 0.7
    x_ = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(p.f(x_, torch.linalg.solve(Q, B @ x_)), x_)[0]
    # from y0 = 0, far from y*(x): the lower level is solved before differentiating
    torch.testing.assert_close(bilevel.hypergradient(p, x), expected, rtol=1e-6, atol=1e-7)
    assert float(bilevel.hypergradient(p, p.info["x_star"]).norm()) < 1e-6


def test_expensive_metrics_only_at_the_final_row():
    calls = []

    def expensive(x, y):
        calls.append(1)
        return {"costly": float(y.sum())}
    problem = BilevelProblem(lambda x, y: ((y - 1) ** 2).sum() + (x ** 2).sum(), lambda x, y: ((y - x) ** 2).sum(),
                             torch.zeros(2, dtype=D), torch.zeros(2, dtype=D), final_metrics=expensive)
    r = solve(problem, "pgdqp", max_iter=100, log_every=10)
    assert len(calls) == 2                      # the final row and the verified answer
    column = r.history["costly"]
    assert all(v != v for v in column[:-1]) and column[-1] == pytest.approx(float(r.y.sum()))
    assert r.verification["metrics"]["costly"] == pytest.approx(float(r.verification["y_resolved"].sum()))
