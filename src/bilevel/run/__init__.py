"""The run layer: the iterate loop, solve and solve_batch, the history of a run, its
checkpoints, live monitoring and the verification of its answer. It sits on the core, the
solvers and the problems' types, and below the command line."""
