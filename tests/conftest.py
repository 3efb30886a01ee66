import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_and_seed():
    torch.manual_seed(0)
    yield


def roundoff(dtype: torch.dtype = torch.float64, operations: float = 1.0, amplification: float = 1.0,
             margin: float = 1e3) -> float:
    """A relative tolerance for two computations of the same quantity by different paths
    (another back-end, another summation order, another number of ranks): machine epsilon of
    `dtype`, times the number of dependent floating-point operations through which a rounding
    difference propagates (iterations times inner steps), times the problem's amplification of
    such a difference (a condition number; 1/delta for a finite difference of step delta),
    times a margin for the norms of the vectors involved. Never from digits seen on one CPU:
    BLAS kernels differ in summation order from one CPU to the next."""
    return torch.finfo(dtype).eps * operations * amplification * margin
