"""First- and second-order oracles of a bilevel problem; the only module that differentiates.

Every method of `Oracle` counts what it delivers, so that every run can be plotted
against oracle calls as well as iterations and time:

    n_f, n_g        values of f and g without derivatives
    n_grad_f        gradients of f (x and y parts together, or one part)
    n_grad_g        gradients of g (x and y parts together, or one part)
    n_hvp           second-order products of g: Hessian-vector, Jacobian-vector, and
                    the double backward that gives grad h (a backward through one unrolled
                    lower-level step counts as one)

No method forms a Hessian. With h = ||grad_y g||^2 the gradient of h is

    grad_x h = 2 grad_yx g^T grad_y g,   grad_y h = 2 grad_yy g grad_y g,

obtained by one backward pass through the graph of grad_y g (a double backward).
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, jvp, vjp

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
    """<a, b> for real tensors of any (equal) shape, as a 0-d tensor."""
    if a.dim() != 1:
        a, b = a.reshape(-1), b.reshape(-1)
    return torch.dot(a, b)


@dataclass(frozen=True)
class Unrolled:
    """An unrolled lower-level trajectory y_0 = z, y_t = P(y_{t-1} - s grad_y g(x, y_{t-1})).

    Attributes:
        f_values: f(x, y_t) for t = 1..T, shape (T,).
        index: the step p (1..T) whose f(x, y_p) was differentiated.
        y_selected: y_p.
        y_last: y_T.
        grad_x, grad_z: the total derivatives of f(x, y_p(x, z)) in x and in z.
    """

    f_values: Tensor
    index: int
    y_selected: Tensor
    y_last: Tensor
    grad_x: Tensor
    grad_z: Tensor


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

    def fd_vjp_grad_y_g(self, x: Tensor, y: Tensor, v: Tensor, delta: float) -> tuple[Tensor, Tensor]:
        """(grad_yx g^T v, grad_yy g v) by central differences of grad g along y:

            [grad g(x, y + delta v) - grad g(x, y - delta v)] / (2 delta),

        exact up to round-off where g is quadratic in y. Two gradients of g, no second order.
        """
        _, gx_plus, gy_plus = self.grad_g(x, y + delta * v)
        _, gx_minus, gy_minus = self.grad_g(x, y - delta * v)
        return (gx_plus - gx_minus) / (2 * delta), (gy_plus - gy_minus) / (2 * delta)

    def unrolled_grad(self, x: Tensor, z: Tensor, steps: int, step_size: float,
                      project: Callable[[Tensor], Tensor] | None = None,
                      select: Callable[[Tensor], int] | None = None) -> Unrolled:
        """Unroll `steps` projected gradient steps on g(x, .) from y_0 = z and differentiate
        f(x, y_p) through them in x and z (reverse mode through the trajectory).

        Args:
            x, z: the upper variable and the initial point y_0.
            steps: T >= 1.
            step_size: s.
            project: the projection P onto the lower feasible set (identity when None).
            select: maps f_values (shape (T,)) to the index p in 1..T to differentiate;
                default p = T.

        Counts: T gradients of g (with graph), T values of f, one gradient of f at
        (x, y_p) and p second-order products (the backward through p steps).
        """
        project = project or (lambda t: t)
        self.counts["n_grad_g"] += steps
        self.counts["n_f"] += steps
        with torch.enable_grad():
            x_, z_ = _leaf(x), _leaf(z)
            trajectory = [z_]
            for _ in range(steps):
                y_prev = trajectory[-1]
                (gy,) = _grads(self._g(x_, y_prev), (y_prev,), create_graph=True)
                trajectory.append(project(y_prev - step_size * gy))
            with torch.no_grad():
                f_values = torch.stack([self._f(x, y_t.detach()) for y_t in trajectory[1:]])
            index = steps if select is None else int(select(f_values))
            if not 1 <= index <= steps:
                raise ValueError(f"Invalid select: returned {index} (expected an index in 1..{steps})")
            self.counts["n_grad_f"] += 1
            self.counts["n_hvp"] += index
            grad_x, grad_z = _grads(self._f(x_, trajectory[index]), (x_, z_))
        return Unrolled(f_values=f_values, index=index, y_selected=trajectory[index].detach(),
                        y_last=trajectory[-1].detach(), grad_x=grad_x, grad_z=grad_z)

    # ----- bookkeeping -------------------------------------------------------------------
    def snapshot(self) -> dict[str, int]:
        """The call counts so far, with their total as `oracle_calls`."""
        out = {name: int(self.counts[name]) for name in COUNTERS}
        out["oracle_calls"] = sum(out.values())
        return out


# the jvp-based derivatives of FuncOracle, never compiled (see FuncOracle's `compile`)
FORWARD_MODE = ("jvp_grad_y_g", "hvp_f", "hvp_h", "hvp_inner_grad_y_g")


class _CompiledOrEager:
    """fn compiled by torch.compile, falling back for good to fn itself (with a warning that
    says why) the first time compilation or the compiled call fails."""

    def __init__(self, name: str, fn: Callable, failures: dict[str, str]):
        self.name, self.eager, self.failures = name, fn, failures
        self.compiled = torch.compile(fn, dynamic=False)

    def __call__(self, *args: Tensor):
        if self.name not in self.failures:
            try:
                return self.compiled(*args)
            except Exception as exc:  # compilation is best-effort: the eager function is the reference
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self.failures[self.name] = reason
                warnings.warn(f"compile=True: {self.name} runs uncompiled ({reason})", RuntimeWarning, stacklevel=3)
        return self.eager(*args)


class FuncOracle(Oracle):
    """The oracle of `Oracle`, built from torch.func transforms instead of torch.autograd.

    Its derivatives are pure functions of their tensor arguments, so they compose with
    `torch.func.vmap` (used by `bilevel.solve_batch`) and `torch.compile` (used by
    `solve(..., compile=True)`). Hessian- and Jacobian-vector products are forward-over-
    reverse (`jvp` of `grad`). Eager, it is slower than `Oracle` on every problem measured
    (benchmarks/RESULTS.md), which is why `Oracle` is the default. Counts as `Oracle`.

    Args:
        f, g: the objectives, (x, y) -> scalar tensor.
        compile: compile each derivative with torch.compile; a derivative whose compilation
            fails runs uncompiled, and `compile_failures` (name -> reason) says why. The
            forward-mode products (`FORWARD_MODE`: Hessian- and Jacobian-vector products,
            used at the start and at logged iterations, not in the step of pgdqp) always run
            uncompiled: torch 2.13's inductor hands the zero tangents of constants
            (efficient zero tensors) to its C++ kernels, which crash the process (measured:
            a segmentation fault in hvp_f on synthetic-sc), and a crash cannot fall back.
    """

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor], g: Callable[[Tensor, Tensor], Tensor],
                 compile: bool = False):
        super().__init__(f, g)
        grad_y_g = grad(g, argnums=1)

        def h(x: Tensor, y: Tensor) -> Tensor:
            gy = grad_y_g(x, y)
            return inner(gy, gy)

        grad_f_xy, grad_h_xy = grad(f, argnums=(0, 1)), grad(h, argnums=(0, 1))

        def with_value(fn: Callable) -> Callable:
            def value_and_grads(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
                (gx, gy), value = grad_and_value(fn, argnums=(0, 1))(x, y)
                return value, gx, gy
            return value_and_grads

        def h_and_grad(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
            def h_with_parts(x: Tensor, y: Tensor):
                gy, value = grad_and_value(g, argnums=1)(x, y)
                return inner(gy, gy), (value, gy)
            (hx, hy), (h, (value, gy)) = grad_and_value(h_with_parts, argnums=(0, 1), has_aux=True)(x, y)
            return value, gy, h, hx, hy

        def vjp_grad_y_g(x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            return vjp(grad_y_g, x, y)[1](v)

        def jvp_grad_y_g(x: Tensor, y: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
            return jvp(grad_y_g, (x, y), (dx, dy))[1]

        def hvp_f(x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
            return jvp(grad_f_xy, (x, y), (vx, vy))[1]

        def hvp_h(x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
            return jvp(grad_h_xy, (x, y), (vx, vy))[1]

        def hvp_inner_grad_y_g(x: Tensor, y: Tensor, w: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
            grad_inner = grad(lambda x, y: inner(grad_y_g(x, y), w), argnums=(0, 1))
            return jvp(grad_inner, (x, y), (vx, vy))[1]

        pure = {"grad_f": with_value(f), "grad_g": with_value(g), "grad_g_y": grad_y_g,
                "grad_g_x": grad(g, argnums=0), "h_and_grad": h_and_grad, "vjp_grad_y_g": vjp_grad_y_g,
                "jvp_grad_y_g": jvp_grad_y_g, "hvp_f": hvp_f, "hvp_h": hvp_h,
                "hvp_inner_grad_y_g": hvp_inner_grad_y_g}
        self.compile_failures: dict[str, str] = {}
        if compile:
            pure = {name: fn if name in FORWARD_MODE else _CompiledOrEager(name, fn, self.compile_failures)
                    for name, fn in pure.items()}
        self._pure = pure

    def grad_f(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.counts["n_grad_f"] += 1
        return self._pure["grad_f"](x.detach(), y.detach())

    def grad_g(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.counts["n_grad_g"] += 1
        return self._pure["grad_g"](x.detach(), y.detach())

    def grad_g_y(self, x: Tensor, y: Tensor) -> Tensor:
        self.counts["n_grad_g"] += 1
        return self._pure["grad_g_y"](x.detach(), y.detach())

    def grad_g_x(self, x: Tensor, y: Tensor) -> Tensor:
        self.counts["n_grad_g"] += 1
        return self._pure["grad_g_x"](x.detach(), y.detach())

    def h_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        self.counts["n_grad_g"] += 1
        self.counts["n_hvp"] += 1
        return self._pure["h_and_grad"](x.detach(), y.detach())

    def vjp_grad_y_g(self, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.counts["n_hvp"] += 1
        return self._pure["vjp_grad_y_g"](x.detach(), y.detach(), v.detach())

    def jvp_grad_y_g(self, x: Tensor, y: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
        self.counts["n_hvp"] += 1
        return self._pure["jvp_grad_y_g"](x.detach(), y.detach(), dx.detach(), dy.detach())

    def hvp_f(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        self.counts["n_hvp"] += 1
        return self._pure["hvp_f"](x.detach(), y.detach(), vx.detach(), vy.detach())

    def hvp_h(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        self.counts["n_hvp"] += 1
        return self._pure["hvp_h"](x.detach(), y.detach(), vx.detach(), vy.detach())

    def hvp_inner_grad_y_g(self, x: Tensor, y: Tensor, w: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        self.counts["n_hvp"] += 1
        return self._pure["hvp_inner_grad_y_g"](x.detach(), y.detach(), w.detach(), vx.detach(), vy.detach())


def depends_on(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> tuple[bool, bool]:
    """Whether fn(x, y) depends on x and on y at this point (through autograd's graph)."""
    with torch.enable_grad():
        x_, y_ = _leaf(x), _leaf(y)
        out = fn(x_, y_)
        if not isinstance(out, Tensor) or not out.requires_grad:
            return False, False
        gx, gy = torch.autograd.grad(out.sum(), (x_, y_), allow_unused=True)
    return gx is not None, gy is not None


def flat_in_y(g: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> bool:
    """Whether grad_y g and grad_yy g v (v a fixed random direction) are both exactly zero at (x, y)."""
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype).to(y.device)
    with torch.enable_grad():
        x_, y_ = _leaf(x), _leaf(y)
        (gy,) = _grads(g(x_, y_), (y_,), create_graph=True)
        (hv,) = _grads(inner(gy, v), (y_,))
    return not bool(gy.any()) and not bool(hv.any())
