import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_and_seed():
    torch.manual_seed(0)
    yield
