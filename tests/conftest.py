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


# a small quadratic whose steps are worked by hand in the tests:
# f = 1/2||x||^2 + 1/2||y - b||^2, g = 1/2 y^T Q y - y^T A x, grad_y g = Q y - A x
HAND_A = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
HAND_Q = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
HAND_B = torch.tensor([1.0, -1.0], dtype=torch.float64)
HAND_X0, HAND_Y0 = torch.tensor([0.5, -0.5], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)


def hand_quadratic():
    """f = 1/2||x||^2 + 1/2||y - b||^2, g = 1/2 y^T Q y - y^T A x: grad_y g = Q y - A x."""
    from bilevel import BilevelProblem
    return BilevelProblem(lambda x, y: 0.5 * (x @ x) + 0.5 * ((y - HAND_B) ** 2).sum(),
                          lambda x, y: 0.5 * y @ HAND_Q @ y - y @ HAND_A @ x, HAND_X0, HAND_Y0)
