"""The README's Python examples run and give what they promise."""
import re
from pathlib import Path

import torch

README = (Path(__file__).parent.parent / "README.md").read_text()


def python_block(after_heading: str) -> str:
    """The first ```python block after a heading of the README."""
    section = README[README.index(after_heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_readme_quickstart_runs():
    namespace = run(python_block("## Quickstart"))
    torch.testing.assert_close(namespace["result"].x, torch.full((5,), 1.5, dtype=torch.float64), atol=2e-3, rtol=0)


def test_readme_minibatch_example_runs():
    namespace = run(python_block("## Minibatches and stochastic methods"))
    assert namespace["result"].history["relative_gap"][-1] < 1e-6


def test_readme_own_problem_runs():
    namespace = run(python_block("## Your own problem"))
    result, more = namespace["result"], namespace["more"]
    assert isinstance(result.y, torch.nn.Sequential) and more.n_iter == 4000
    assert more.history["iter"][:len(result.history["iter"]) - 1] == result.history["iter"][:-1]
