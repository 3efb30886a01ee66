"""First- and second-order oracles of a bilevel problem; the only module that differentiates.

Every method of `Oracle` counts what it delivers, so that every run can be plotted
against oracle calls as well as iterations and time:

    n_f, n_g        values of f and g without derivatives
    n_grad_f        gradients of f (x and y parts together, or one part)
    n_grad_g        gradients of g (x and y parts together, or one part)
    n_hvp           second-order products of g: Hessian-vector, Jacobian-vector, and
                    the double backward that gives grad h

No method forms a Hessian. With h = ||grad_y g||^2 the gradient of h is

    grad_x h = 2 grad_yx g^T grad_y g,   grad_y h = 2 grad_yy g grad_y g,

obtained by one backward pass through the graph of grad_y g (a double backward).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch import Tensor

COUNTERS = ("n_f", "n_g", "n_grad_f", "n_grad_g", "n_hvp")


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_(True)


def _grads(out: Tensor, inputs: tuple[Tensor, ...], create_graph: bool = False) -> tuple[Tensor, ...]:
    """Gradients of a scalar with zeros (not None) for inputs it does not depend on."""
    if not out.requires_grad:
        return tuple(torch.zeros_like(t) for t in inputs)
    grads = torch.autograd.grad(out, inputs, allow_unused=True, create_graph=create_graph)
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))


def inner(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> for tensors of any (equal) shape, as a 0-d tensor."""
    return torch.vdot(a.reshape(-1), b.reshape(-1))


class Oracle:
    """Values, gradients and second-order products of f and g, with call counts.

    Args:
        f: the upper-level objective, (x, y) -> scalar tensor.
        g: the lower-level objective, (x, y) -> scalar tensor.
    """

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor], g: Callable[[Tensor, Tensor], Tensor]):
        self._f = f
        self._g = g
        self.counts: Counter[str] = Counter({name: 0 for name in COUNTERS})

    # ----- values --------------------------------------------------------------------
    def f(self, x: Tensor, y: Tensor) -> Tensor:
        self.counts["n_f"] += 1
        with torch.no_grad():
            return self._f(x, y)

    def g(self, x: Tensor, y: Tensor) -> Tensor:
        self.counts["n_g"] += 1
        with torch.no_grad():
            return self._g(x, y)

    # ----- gradients -------------------------------------------------------------------
    def grad_f(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(f, grad_x f, grad_y f)."""
        self.counts["n_grad_f"] += 1
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            value = self._f(x_, y_)
            gx, gy = _grads(value, (x_, y_))
        return value.detach(), gx, gy

    def grad_g(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(g, grad_x g, grad_y g)."""
        self.counts["n_grad_g"] += 1
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            value = self._g(x_, y_)
            gx, gy = _grads(value, (x_, y_))
        return value.detach(), gx, gy

    def grad_g_y(self, x: Tensor, y: Tensor) -> Tensor:
        """grad_y g (x held fixed)."""
        self.counts["n_grad_g"] += 1
        with torch.enable_grad():
            y_ = _leaf(y)
            (gy,) = _grads(self._g(x.detach(), y_), (y_,))
        return gy

    def grad_g_x(self, x: Tensor, y: Tensor) -> Tensor:
        """grad_x g (y held fixed)."""
        self.counts["n_grad_g"] += 1
        with torch.enable_grad():
            x_ = _leaf(x)
            (gx,) = _grads(self._g(x_, y.detach()), (x_,))
        return gx

    # ----- second order ----------------------------------------------------------------
    def h_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(g, grad_y g, h, grad_x h, grad_y h) with h = ||grad_y g||^2, by one double backward."""
        self.counts["n_grad_g"] += 1
        self.counts["n_hvp"] += 1
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            value = self._g(x_, y_)
            (gy,) = _grads(value, (y_,), create_graph=True)
            h = inner(gy, gy)
            hx, hy = _grads(h, (x_, y_))
        return value.detach(), gy.detach(), h.detach(), hx, hy

    def vjp_grad_y_g(self, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(grad_yx g^T v, grad_yy g v): the gradient of <grad_y g, v> in x and y."""
        self.counts["n_hvp"] += 1
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            (gy,) = _grads(self._g(x_, y_), (y_,), create_graph=True)
            return _grads(inner(gy, v.detach()), (x_, y_))

    def jvp_grad_y_g(self, x: Tensor, y: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
        """grad_yx g dx + grad_yy g dy: the directional derivative of grad_y g along (dx, dy)."""
        self.counts["n_hvp"] += 1
        # J u = d/dw <J^T w, u> at w = 0: two reverse passes, valid for any closure.
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            (gy,) = _grads(self._g(x_, y_), (y_,), create_graph=True)
            w = torch.zeros_like(gy, requires_grad=True)
            jx, jy = _grads(inner(gy, w), (x_, y_), create_graph=True)
            (ju,) = _grads(inner(jx, dx.detach()) + inner(jy, dy.detach()), (w,))
        return ju

    def hvp_f(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """The Hessian of f (in x and y together) times (vx, vy)."""
        self.counts["n_hvp"] += 1
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            gx, gy = _grads(self._f(x_, y_), (x_, y_), create_graph=True)
            return _grads(inner(gx, vx.detach()) + inner(gy, vy.detach()), (x_, y_))

    def hvp_h(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """The Hessian of h = ||grad_y g||^2 times (vx, vy) (third derivatives of g)."""
        self.counts["n_hvp"] += 1
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            (gy,) = _grads(self._g(x_, y_), (y_,), create_graph=True)
            hx, hy = _grads(inner(gy, gy), (x_, y_), create_graph=True)
            return _grads(inner(hx, vx.detach()) + inner(hy, vy.detach()), (x_, y_))

    def hvp_inner_grad_y_g(self, x: Tensor, y: Tensor, w: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """The Hessian of <grad_y g, w> (w held fixed) times (vx, vy) (third derivatives of g).

        With w = grad_y g this is the third-order part of hvp_h:
        hvp_h(v) = 2 J^T J v + 2 hvp_inner_grad_y_g(grad_y g, v).
        """
        self.counts["n_hvp"] += 1
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            (gy,) = _grads(self._g(x_, y_), (y_,), create_graph=True)
            jx, jy = _grads(inner(gy, w.detach()), (x_, y_), create_graph=True)
            return _grads(inner(jx, vx.detach()) + inner(jy, vy.detach()), (x_, y_))

    # ----- bookkeeping -------------------------------------------------------------------
    def snapshot(self) -> dict[str, int]:
        """The call counts so far, with their total as `oracle_calls`."""
        out = {name: int(self.counts[name]) for name in COUNTERS}
        out["oracle_calls"] = sum(out.values())
        return out


def depends_on(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> tuple[bool, bool]:
    """Whether fn(x, y) depends on x and on y at this point (through autograd's graph)."""
    with torch.enable_grad():
        x_, y_ = _leaf(x), _leaf(y)
        out = fn(x_, y_)
        if not isinstance(out, Tensor) or not out.requires_grad:
            return False, False
        gx, gy = torch.autograd.grad(out.sum(), (x_, y_), allow_unused=True)
    return gx is not None, gy is not None
