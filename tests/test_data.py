"""Problems with data and minibatch runs: full-data objectives, unbiased minibatch estimates,
runs reproducible by seed, and checkpoints that hold the sampler's position."""
import pytest
import torch
from torch.utils.data import TensorDataset

from bilevel import BilevelProblem, solve
from bilevel.core.data import Data, Sampled
from bilevel.core.oracles import Autograd, Oracle, backend

D = torch.float64


def ridge(n=400, n_val=100, d=5, seed=0, dataset=False):
    """Ridge regression with a learned log-regulariser x: g = mean_i (a_i y - b_i)^2 / 2 + e^x ||y||^2 / 2."""
    gen = torch.Generator().manual_seed(seed)
    A, w = torch.randn(n, d, generator=gen, dtype=D), torch.randn(d, generator=gen, dtype=D)
    b = A @ w + torch.randn(n, generator=gen, dtype=D)
    Av = torch.randn(n_val, d, generator=gen, dtype=D)

    def g(x, y, batch):
        a, t = batch
        return 0.5 * ((a @ y - t) ** 2).mean() + 0.5 * torch.exp(x).sum() * (y ** 2).sum()

    def f(x, y, batch):
        a, t = batch
        return 0.5 * ((a @ y - t) ** 2).mean()
    lower = TensorDataset(A, b) if dataset else (A, b)
    return BilevelProblem(f, g, torch.zeros(1, dtype=D), torch.zeros(d, dtype=D), upper_data=(Av, Av @ w),
                          lower_data=lower), (A, b)


def test_the_problem_f_and_g_use_all_the_data():
    problem, (A, b) = ridge()
    y = torch.ones(5, dtype=D)
    assert float(problem.g(problem.x0, y)) == pytest.approx(float(0.5 * ((A @ y - b) ** 2).mean() + 0.5 * 5))
    dataset, _ = ridge(dataset=True)
    assert float(dataset.g(problem.x0, y)) == pytest.approx(float(problem.g(problem.x0, y)), rel=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", [False, True])
def test_minibatch_estimates_are_unbiased(dataset):
    """The mean of minibatch gradients and Hessian-vector products over many batches is the
    full-data value, within a few standard errors."""
    problem, _ = ridge(dataset=dataset)
    generator = torch.Generator().manual_seed(0)
    sampled = Oracle(Sampled(lambda f, g: Autograd(f, g), problem.batched, (problem.upper_data, problem.lower_data),
                             (16, 16), generator))
    full = Oracle(Autograd(problem.f, problem.g))
    x, y, v = torch.tensor([0.3], dtype=D), torch.randn(5, dtype=D), torch.randn(5, dtype=D)
    draws = []
    for _ in range(2000):
        sampled.resample()
        draws.append(torch.cat([sampled.grad_g(x, y)[2], sampled.vjp_grad_y_g(x, y, v)[1], sampled.grad_f(x, y)[2]]))
    draws = torch.stack(draws)
    mean, error = draws.mean(0), draws.std(0) / len(draws) ** 0.5
    expected = torch.cat([full.grad_g(x, y)[2], full.vjp_grad_y_g(x, y, v)[1], full.grad_f(x, y)[2]])
    assert bool(((mean - expected).abs() <= 5 * error + 1e-12).all())


def test_minibatch_runs_are_reproducible_by_seed_and_differ_across_seeds():
    problem, _ = ridge()
    a = solve(problem, "sgf", max_iter=50, log_every=10, batch_size=32, seed=3)
    b = solve(problem, "sgf", max_iter=50, log_every=10, batch_size=32, seed=3)
    c = solve(problem, "sgf", max_iter=50, log_every=10, batch_size=32, seed=4)
    assert torch.equal(a.x, b.x) and a.history["f"] == b.history["f"]
    assert not torch.equal(a.x, c.x)
    full = solve(problem, "sgf", max_iter=50, log_every=10)
    assert not torch.equal(a.x, full.x)


def test_a_checkpoint_continues_the_batches_of_an_uninterrupted_run(tmp_path):
    problem, _ = ridge()
    whole = solve(problem, "pgdqp", max_iter=60, log_every=10, batch_size=(20, 40), seed=1)
    path = tmp_path / "ck.pt"

    def crash(state, aux):
        if state.k == 35:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        solve(problem, "pgdqp", max_iter=60, log_every=10, batch_size=(20, 40), seed=1, checkpoint=path,
              checkpoint_every=10, callback=crash)
    resumed = solve(problem, "pgdqp", max_iter=60, log_every=10, batch_size=(20, 40), seed=1, checkpoint=path)
    assert torch.equal(whole.x, resumed.x) and torch.equal(whole.y, resumed.y)


def test_the_verification_uses_all_the_data():
    problem, (A, b) = ridge()
    r = solve(problem, "pgdqp", max_iter=200, log_every=100, batch_size=32, seed=0)
    reg = float(torch.exp(r.x))
    y_star = torch.linalg.solve(A.T @ A / len(b) + reg * torch.eye(5, dtype=D), A.T @ b / len(b))
    torch.testing.assert_close(r.verification["y_resolved"], y_star, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(upper_data=torch.zeros(3), lower_data=None), "Invalid lower_data: None while the other level has data"),
    (dict(upper_data=(torch.zeros(3), torch.zeros(4)), lower_data=torch.zeros(3)),
     r"Invalid upper_data: tensors with first dimensions \[3, 4\]"),
    (dict(upper_data=[1, 2], lower_data=torch.zeros(3)), "Invalid upper_data: list"),
])
def test_bad_data_is_named(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        BilevelProblem(lambda x, y, batch: (y ** 2).sum() + x.sum(), lambda x, y, batch: (y ** 2).sum(),
                       torch.zeros(1), torch.zeros(2), **kwargs)


def test_bad_batch_sizes_are_named():
    problem, _ = ridge()
    with pytest.raises(ValueError, match=r"Invalid batch_size: \(50, 1000\) \(the lower level has 400 samples\)"):
        solve(problem, "pgdqp", batch_size=(50, 1000))
    with pytest.raises(ValueError, match=r"Invalid batch_size: 1000 \(the upper level has 100 samples\)"):
        solve(problem, "pgdqp", batch_size=1000)
    with pytest.raises(ValueError, match=r"Invalid batch_size: 0"):
        solve(problem, "pgdqp", batch_size=0)
    with pytest.raises(ValueError, match=r"Invalid batch_size: 8 for a problem without data"):
        solve(BilevelProblem(lambda x, y: (y ** 2).sum() + x.sum(), lambda x, y: (y ** 2).sum(),
                             torch.zeros(1), torch.zeros(2)), "pgdqp", batch_size=8)


def test_data_of_a_level():
    data = Data("lower_data", (torch.arange(5.0), torch.arange(5) * 2))
    batch = data.take(torch.tensor([4, 1]))
    assert data.size == 5 and batch[0].tolist() == [4.0, 1.0] and batch[1].tolist() == [8, 2]
    assert backend("func", lambda x, y: (y ** 2).sum(), lambda x, y: (y ** 2).sum()) is not None
