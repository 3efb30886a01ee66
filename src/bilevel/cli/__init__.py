"""The command line and the harness it drives: run configurations, sweeps, the result layout
on disk, tables and plots. Nothing in the library imports it. It needs the `harness` extra
(pyyaml, pandas, pyarrow, matplotlib): `pip install 'bilevel[harness]'`."""
import importlib.util

_MISSING = [name for name in ("yaml", "pandas", "pyarrow", "matplotlib") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(f"bilevel's command line needs {', '.join(_MISSING)}, which the library does not: "
                      f"pip install 'bilevel[harness]'")
