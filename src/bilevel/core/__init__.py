"""The core layer: the problem, its variables and data, the oracles that differentiate it, the
linear algebra on them and the types a solver's step speaks (State, Aux, Result). It imports
nothing above it (solvers, problems, run, cli)."""
