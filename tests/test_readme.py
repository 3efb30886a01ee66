"""The README's Python quickstart runs and gives the bilevel solution it promises."""
import re
from pathlib import Path

import torch


def test_readme_quickstart_runs():
    text = (Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    torch.testing.assert_close(namespace["result"].x, torch.full((5,), 1.5, dtype=torch.float64), atol=2e-3, rtol=0)
