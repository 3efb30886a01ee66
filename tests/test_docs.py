"""The README's and the documentation's Python examples run, and say what the pages say.

Every ```python block of README.md and docs/ runs here, page by page, its blocks in order in
one namespace, unless the line before it is `<!-- not run: REASON -->`. Every `Result` an
example leaves ends with success=True, except those a page explains (EXPLAINED_FAILURES).
"""
import math
import re
from pathlib import Path

import pytest
import torch
from scipy.optimize import minimize_scalar

import bilevel

ROOT = Path(__file__).parent.parent
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<code>.*?)```", re.DOTALL)
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>\S.*\S) -->")

PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
SLOW_PAGES = {"README.md", "docs/your-own-problem.md", "docs/guides/speed.md", "docs/guides/minibatches.md",
              "docs/guides/long-runs.md", "docs/solvers.md"}
# (page, variable) -> the sentence of the page that explains why the run ends with success=False
EXPLAINED_FAILURES = {
    ("docs/your-own-problem.md", "result"): "`success` is therefore False",
    ("README.md", "paper"): "False: the paper's step sizes shrink as K^(-1/3)",
}


def blocks(page: str) -> list[tuple[str, str | None]]:
    """The page's Python blocks in order, each with the reason it is not run (None: it runs)."""
    found = []
    for match in BLOCK.finditer((ROOT / page).read_text()):
        if match.group("lang") == "python":
            reason = NOT_RUN.search(match.group("before"))
            found.append((match.group("code"), reason.group("reason") if reason else None))
    return found


def run_page(page: str) -> tuple[dict, dict[str, bilevel.Result]]:
    """Runs the page's blocks in one namespace; returns it and every Result a block bound to a name."""
    namespace: dict = {"__name__": "docs_" + re.sub(r"\W", "_", page)}
    results: dict[str, bilevel.Result] = {}
    for code, reason in blocks(page):
        if reason is None:
            exec(compile(code, str(ROOT / page), "exec"), namespace)  # noqa: S102 (the page's own examples)
            for name, value in namespace.items():
                members = value if isinstance(value, list) else [value]
                for i, member in enumerate(members):
                    if isinstance(member, bilevel.Result):
                        results[name if member is value else f"{name}[{i}]"] = member
    return namespace, results


def run_block_after(page: str, heading: str) -> dict:
    """Runs the first Python block after a heading of the page; returns its namespace."""
    text = (ROOT / page).read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(code, str(ROOT / page), "exec"), namespace)  # noqa: S102 (the page's own example)
    return namespace


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p
                                  for p in PAGES if blocks(p)])
def test_every_example_runs_and_ends_with_success(page):
    _, results = run_page(page)
    text = (ROOT / page).read_text()
    for name, result in results.items():
        explanation = EXPLAINED_FAILURES.get((page, name))
        if explanation is None:
            assert result.success, f"{page}: {name} ended with success=False: {result.message}"
        else:
            assert not result.success and explanation in text, (page, name)


def test_blocks_not_run_say_why_and_the_rest_are_run():
    pages = {page: blocks(page) for page in PAGES}
    assert sum(len(found) for found in pages.values()) >= 10
    for page, found in pages.items():
        for code, reason in found:
            assert reason is None or len(reason.split()) >= 4, (page, reason)
    assert all(reason is None for _, reason in pages["README.md"])


def test_readme_links_point_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert links
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).is_file(), link


def test_every_guide_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, page


def test_docs_count_the_registered_solvers():
    """The pages that state how many methods there are state the registry's count."""
    n = len(bilevel.SOLVERS)
    assert f"the {n} methods" in (ROOT / "docs" / "index.md").read_text()
    assert f"{n - 1} other methods" in (ROOT / "docs" / "index.md").read_text()
    assert f"{n - 1} other methods" in (ROOT / "README.md").read_text()
    assert bilevel.solvers.table() in (ROOT / "README.md").read_text()    # the table derived from the registry
    assert "<!-- bilevel-solvers -->" in (ROOT / "docs" / "solvers.md").read_text()


@pytest.mark.slow
def test_readme_quickstart_finds_the_closed_form_answer():
    """y*(x) = x, so F(x) = ||x - 1||^2 + ||x - 2||^2: x* = 1.5 and F(x*) = 5 * 0.5 = 2.5."""
    namespace = run_block_after("README.md", "## Quickstart")
    result = namespace["result"]
    assert result.success
    torch.testing.assert_close(result.x, torch.full((5,), 1.5, dtype=torch.float64), atol=1e-3, rtol=0)
    assert result.verification["upper_value"] == pytest.approx(2.5, rel=1e-3)


@pytest.mark.slow
def test_readme_own_problem_finds_the_optimal_weight_decay():
    """The lower level is ridge regression: y*(x) = (Z^T Z / n + e^x I)^-1 Z^T b / n with Z = [A, 1]
    (the bias is decayed too), so F(x) = f(x, y*(x)) is a function of one variable, minimised here
    by scipy; the run's x must be within 1e-2 of it and end verified, and the continued run too."""
    namespace = run_block_after("README.md", "## Your own problem")
    result, more = namespace["result"], namespace["more"]
    A, b, A_val, b_val = (namespace[name] for name in ("A", "b", "A_val", "b_val"))
    Z, Z_val = torch.cat([A, torch.ones(len(A), 1, dtype=A.dtype)], 1), torch.cat(
        [A_val, torch.ones(len(A_val), 1, dtype=A.dtype)], 1)

    def honest(x: float) -> float:
        w = torch.linalg.solve(Z.T @ Z / len(Z) + math.exp(x) * torch.eye(5, dtype=A.dtype), Z.T @ b / len(Z))
        return float(((Z_val @ w - b_val) ** 2).mean())

    best = minimize_scalar(honest, bounds=(-10.0, 2.0), method="bounded", options={"xatol": 1e-10})
    assert result.success and more.success
    assert isinstance(result.y, torch.nn.Linear) and more.n_iter == 600
    assert abs(float(result.x) - best.x) <= 1e-2 * abs(best.x)
    assert result.verification["upper_value"] == pytest.approx(honest(float(result.x)), rel=1e-6)
    assert more.history["iter"][:len(result.history["iter"]) - 1] == result.history["iter"][:-1]


@pytest.mark.slow
def test_your_own_problem_reads_as_the_page_says():
    ns, _ = run_page("docs/your-own-problem.md")
    result, check = ns["result"], ns["result"].verification
    # the page's table (measured with torch 2.13 on a CPU; digits can move with BLAS kernels,
    # the claims the text makes may not): update docs/your-own-problem.md if these fail
    assert result.status is bilevel.Status.COMPLETED
    assert abs(result.final("f") - 0.153) < 0.02
    assert abs(check["upper_value"] - 0.345) < 0.03
    assert check["upper_value"] > result.final("f") + 0.1            # the iterate flatters the answer
    assert check["metrics"]["val_accuracy"] < result.final("val_accuracy")
    assert check["metrics"]["weight_gap"] == pytest.approx(result.final("weight_gap"))
    assert result.final("weight_gap") > 0.3                          # corrupted samples weighted down
    assert not result.success and "verification failed" in result.message and check["reason"]
    assert set(ns["trained"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    problem = ns["build"](seed=0, n_train=50)
    assert isinstance(problem, bilevel.BilevelProblem) and problem.x0.shape == (50,)


@pytest.mark.slow
def test_minibatch_example_reaches_the_closed_form_optimum():
    ns, _ = run_page("docs/guides/minibatches.md")
    result, problem = ns["result"], ns["problem"]
    assert result.history["relative_gap"][-1] < 1e-6
    assert result.verification["upper_value"] == pytest.approx(problem.info["value_star"], rel=1e-6)


def test_every_results_section_cited_exists():
    """A citation `benchmarks/RESULTS.md, section "NAME"` (or sections "A" and "B") in the code or
    the docs names a section of RESULTS.md, marked <!-- NAME --> ... <!-- /NAME -->."""
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    cited = {}
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]:
        text = " ".join(path.read_text().split())        # citations wrap across lines
        for match in re.finditer(r'RESULTS\.md, sections? ((?:"[\w/-]+"(?:,| and)? ?)+)', text):
            for name in re.findall(r'"([\w/-]+)"', match.group(1)):
                cited.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert len(cited) >= 5
    missing = {name: where for name, where in cited.items()
               if f"<!-- {name} -->" not in results or f"<!-- /{name} -->" not in results}
    assert not missing, missing
