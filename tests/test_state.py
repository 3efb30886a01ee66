"""The small pieces every step goes through: State.replace, the guard's checksum and the
history's reading of diagnostics, each against the plain computation it stands for."""
import dataclasses
import math

import pytest
import torch

from bilevel.core.state import checksum
from bilevel.run.history import _floats
from bilevel.solvers.pgdqp import Gradients, PGDQPState

D = torch.float64


def a_state() -> PGDQPState:
    x, y = torch.arange(3, dtype=D), torch.arange(2, dtype=D)
    return PGDQPState(x=x, y=y, k=4, lipschitz_f=2.0, velocity=(x.clone(), y.clone()),
                      grads=Gradients(x, y, x, y), ratio=3.0)


def test_replace_is_dataclasses_replace():
    state = a_state()
    new_x = torch.ones(3, dtype=D)
    ours = state.replace(x=new_x, k=5, ratio=torch.tensor(2.0))
    theirs = dataclasses.replace(state, x=new_x, k=5, ratio=torch.tensor(2.0))
    assert type(ours) is PGDQPState
    for field in dataclasses.fields(PGDQPState):
        a, b = getattr(ours, field.name), getattr(theirs, field.name)
        assert a is b or a == b or (isinstance(a, torch.Tensor) and torch.equal(a, b)), field.name
    assert state.k == 4 and state.x is not new_x          # the original is left as it was
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours.k = 6


def test_replace_names_an_unknown_field():
    with pytest.raises(TypeError, match=r"PGDQPState has no field\(s\) \['lipschitz'\]"):
        a_state().replace(lipschitz=1.0)


@pytest.mark.parametrize("eager", [False, True])
def test_checksum_is_the_sum_and_not_finite_where_an_entry_is_not(eager):
    x, y = torch.tensor([1.0, 2.0], dtype=torch.float32), torch.tensor([0.5], dtype=D)
    values = [torch.tensor(0.25, dtype=D), torch.tensor(-1.0, dtype=torch.float32)]
    assert float(checksum(x, y, values, eager=eager)) == pytest.approx(2.75, abs=1e-12)
    for bad in (math.nan, math.inf):
        assert not math.isfinite(float(checksum(x, y, values + [torch.tensor(bad, dtype=D)], eager=eager)))
        assert not math.isfinite(float(checksum(torch.tensor([1.0, bad]), y, values, eager=eager)))


def test_the_eager_checksum_takes_a_diagnostic_of_another_shape_as_the_chain_does():
    x, y = torch.ones(2, dtype=D), torch.ones(2, dtype=D)
    values = [torch.tensor(1.0, dtype=D), torch.tensor([2.0], dtype=D)]
    assert float(checksum(x, y, values, eager=True)) == float(checksum(x, y, values)) == 7.0


def test_floats_reads_what_float_reads():
    values = [torch.tensor(1 / 3, dtype=torch.float32), 0.1, torch.tensor(2 / 3, dtype=D),
              torch.tensor(7, dtype=torch.int64), torch.tensor(math.nan, dtype=D)]
    read = _floats(values)
    expected = [float(v) for v in values]
    assert read[:4] == expected[:4] and all(isinstance(v, float) for v in read)
    assert math.isnan(read[4])
    assert _floats([torch.tensor([1.5], dtype=D), torch.tensor(2.0)]) == [1.5, 2.0]   # a 1-element vector
