"""Derivatives of a bilevel problem: back-ends that differentiate and the Oracle that counts.

A back-end turns f and g into values, gradients and second-order products; this module holds
the only code of the library that calls torch.autograd or torch.func:

    Autograd          torch.autograd (the default: fastest eagerly, benchmarks/RESULTS.md)
    Func              the same derivatives as torch.func transforms, which compose with
                      torch.func.vmap (bilevel.solve_batch) and torch.compile
    Func(compile=True)   each derivative compiled by torch.compile ("compiled")

Data-parallel reduction (bilevel.distributed.Reduced) wraps a back-end; it is not one.

The `Oracle` is what solvers call. Each of its methods asks the back-end and adds the
method's cost from `COSTS` to the call counts, so that every run can be plotted against
oracle calls as well as iterations and time:

    n_f, n_g        values of f and g without derivatives
    n_grad_f        gradients of f (x and y parts together, or one part)
    n_grad_g        gradients of g (x and y parts together, or one part)
    n_hvp           second-order products of g: Hessian-vector, Jacobian-vector, and the
                    double backward that gives grad h (a backward through one unrolled
                    lower-level step counts as one)

No method forms a Hessian. With h = ||grad_y g||^2 the gradient of h is

    grad_x h = 2 grad_yx g^T grad_y g,   grad_y h = 2 grad_yy g grad_y g,

obtained by one backward pass through the graph of grad_y g (a double backward). On a y box,
h is the squared projected-gradient residual ||y - P(y - grad_y g)||^2 (zero exactly at the
lower level's KKT points on the box, where grad_y g itself need not vanish), differentiated
the same way.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, jvp, vjp
import torch.utils._pytree as pytree

Objective = Callable[[Tensor, Tensor], Tensor]
COUNTERS = ("n_f", "n_g", "n_grad_f", "n_grad_g", "n_hvp")
# what one call of each Oracle method adds to the counts
COSTS: dict[str, dict[str, int]] = {
    "f": {"n_f": 1},
    "g": {"n_g": 1},
    "grad_f": {"n_grad_f": 1},
    "grad_g": {"n_grad_g": 1},
    "grad_g_y": {"n_grad_g": 1},
    "grad_g_x": {"n_grad_g": 1},
    "h_and_grad": {"n_grad_g": 1, "n_hvp": 1},
    "vjp_grad_y_g": {"n_hvp": 1},
    "jvp_grad_y_g": {"n_hvp": 1},
    "hvp_f": {"n_hvp": 1},
    "hvp_h": {"n_hvp": 1},
    "hvp_inner_grad_y_g": {"n_hvp": 1},
}
BACKENDS = ("autograd", "func", "compiled")


def inner(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> for real tensors of any (equal) shape, as a 0-d tensor."""
    if a.dim() != 1:
        a, b = a.reshape(-1), b.reshape(-1)
    return torch.dot(a, b)


def lower_residual(y: Tensor, grad_y: Tensor, y_bounds: tuple | None) -> Tensor:
    """r = y - P(y - grad_y g) on a y box (low, high), grad_y g without one (differentiable)."""
    if y_bounds is None:
        return grad_y
    return y - torch.clamp(y - grad_y, min=y_bounds[0], max=y_bounds[1])


def _leaf(t: Tensor) -> Tensor:
    return t.detach().requires_grad_(True)


def _grads(out: Tensor, inputs: tuple[Tensor, ...], create_graph: bool = False,
           retain_graph: bool | None = None) -> tuple[Tensor, ...]:
    """Gradients of a scalar with zeros (not None) for inputs it does not depend on (the graph kept
    for further backward passes with retain_graph)."""
    if not out.requires_grad:
        return tuple(torch.zeros_like(t) for t in inputs)
    grads = torch.autograd.grad(out, inputs, allow_unused=True, create_graph=create_graph, retain_graph=retain_graph)
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))


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


def unrolled_grad(f: Objective, g: Objective, x: Tensor, z: Tensor, steps: int, step_size: float,
                  project: Callable[[Tensor], Tensor] | None = None,
                  select: Callable[[Tensor], int] | None = None) -> Unrolled:
    """Unroll `steps` projected gradient steps on g(x, .) from y_0 = z and differentiate
    f(x, y_p) through them in x and z (reverse mode through the trajectory, by autograd).

    `select` maps f_values (shape (T,)) to the index p in 1..T; default p = T.
    """
    project = project or (lambda t: t)
    with torch.enable_grad():
        x_, z_ = _leaf(x), _leaf(z)
        trajectory = [z_]
        for _ in range(steps):
            y_prev = trajectory[-1]
            (gy,) = _grads(g(x_, y_prev), (y_prev,), create_graph=True)
            trajectory.append(project(y_prev - step_size * gy))
        with torch.no_grad():
            f_values = torch.stack([f(x, y_t.detach()) for y_t in trajectory[1:]])
        index = steps if select is None else int(select(f_values))
        if not 1 <= index <= steps:
            raise ValueError(f"Invalid select: returned {index} (expected an index in 1..{steps})")
        grad_x, grad_z = _grads(f(x_, trajectory[index]), (x_, z_))
    return Unrolled(f_values=f_values, index=index, y_selected=trajectory[index].detach(),
                    y_last=trajectory[-1].detach(), grad_x=grad_x, grad_z=grad_z)


class Backend:
    """What every back-end shares: f and g, their values, and the unrolled trajectory
    (`unrolled_grad`, by autograd whatever the back-end). Subclasses add the derivatives.

    Args:
        f: the upper-level objective, (x, y) -> scalar tensor.
        g: the lower-level objective, (x, y) -> scalar tensor.
        y_bounds: the problem's y box (low, high), which h measures its residual on; None: none.
    """

    sampled = False     # a back-end of minibatches says True (`bilevel.core.data.Sampled`)
    compiles = False    # a back-end whose `fuse` compiles says True (`Func`)

    def __init__(self, f: Objective, g: Objective, y_bounds: tuple | None = None):
        self.objectives = (f, g)
        self.y_bounds = y_bounds

    def f(self, x: Tensor, y: Tensor) -> Tensor:
        """f(x, y)."""
        with torch.no_grad():
            return self.objectives[0](x, y)

    def g(self, x: Tensor, y: Tensor) -> Tensor:
        """g(x, y)."""
        with torch.no_grad():
            return self.objectives[1](x, y)

    def unrolled_grad(self, x: Tensor, z: Tensor, steps: int, step_size: float,
                      project: Callable[[Tensor], Tensor] | None = None,
                      select: Callable[[Tensor], int] | None = None) -> Unrolled:
        """See `unrolled_grad` (reverse mode through T unrolled lower-level steps)."""
        return unrolled_grad(*self.objectives, x, z, steps, step_size, project, select)


class Autograd(Backend):
    """Derivatives of f and g by torch.autograd.

    Args:
        f: the upper-level objective, (x, y) -> scalar tensor.
        g: the lower-level objective, (x, y) -> scalar tensor.
    """

    def _value_and_grads(self, fn: Objective, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            value = fn(x_, y_)
            gx, gy = _grads(value, (x_, y_))
        return value.detach(), gx, gy

    def grad_f(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(f, grad_x f, grad_y f)."""
        return self._value_and_grads(self.objectives[0], x, y)

    def grad_g(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(g, grad_x g, grad_y g)."""
        return self._value_and_grads(self.objectives[1], x, y)

    def grad_g_y(self, x: Tensor, y: Tensor) -> Tensor:
        """grad_y g (x held fixed)."""
        with torch.enable_grad():
            y_ = _leaf(y)
            (gy,) = _grads(self.objectives[1](x.detach(), y_), (y_,))
        return gy

    def grad_g_x(self, x: Tensor, y: Tensor) -> Tensor:
        """grad_x g (y held fixed)."""
        with torch.enable_grad():
            x_ = _leaf(x)
            (gx,) = _grads(self.objectives[1](x_, y.detach()), (x_,))
        return gx

    def _grad_y_g_graph(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_, y_, g, grad_y g) with the graph of grad_y g kept for a second backward."""
        x_, y_ = _leaf(x), _leaf(y)
        value = self.objectives[1](x_, y_)
        (gy,) = _grads(value, (y_,), create_graph=True)
        return x_, y_, value, gy

    def h_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(g, grad_y g, h, grad_x h, grad_y h) with h = ||grad_y g||^2, by one double backward."""
        with torch.enable_grad():
            x_, y_, value, gy = self._grad_y_g_graph(x, y)
            r = lower_residual(y_, gy, self.y_bounds)
            h = inner(r, r)
            hx, hy = _grads(h, (x_, y_))
        return value.detach(), gy.detach(), h.detach(), hx, hy

    def vjp_grad_y_g(self, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(grad_yx g^T v, grad_yy g v): the gradient of `<grad_y g, v>` in x and y."""
        with torch.enable_grad():
            x_, y_, _, gy = self._grad_y_g_graph(x, y)
            return _grads(inner(gy, v.detach()), (x_, y_))

    def grad_y_g_and_vjp(self, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(g, grad_y g, grad_yx g^T v, grad_yy g v): one forward of g, the backward that gives
        grad_y g with its graph, and one backward through that graph."""
        with torch.enable_grad():
            x_, y_, value, gy = self._grad_y_g_graph(x, y)
            jx, jy = _grads(inner(gy, v.detach()), (x_, y_))
        return value.detach(), gy.detach(), jx, jy

    def jvp_grad_y_g(self, x: Tensor, y: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
        """grad_yx g dx + grad_yy g dy: the directional derivative of grad_y g along (dx, dy)."""
        # J u = d/dw <J^T w, u> at w = 0: two reverse passes, valid for any closure
        with torch.enable_grad():
            x_, y_, _, gy = self._grad_y_g_graph(x, y)
            w = torch.zeros_like(gy, requires_grad=True)
            jx, jy = _grads(inner(gy, w), (x_, y_), create_graph=True)
            (ju,) = _grads(inner(jx, dx.detach()) + inner(jy, dy.detach()), (w,))
        return ju

    def linearize_grad_y_g(self, x: Tensor, y: Tensor) -> tuple[Callable, Callable]:
        """`vjp_grad_y_g` and `jvp_grad_y_g` at a fixed (x, y) as functions of their vector, on graphs
        built once: grad_y g with its graph, and (at the first J v) J^T w of a free w, J v = d/dw
        <J^T w, v>; each product is then one backward pass through them, not a new forward and
        graph. For the many products at one point of a linear solve (pgdqp's conjugate gradients,
        the verification's)."""
        with torch.enable_grad():
            x_, y_, _, gy = self._grad_y_g_graph(x, y)
        transposed: list[Tensor] = []        # (w, J^T w), made once where J v is asked

        def vjp(v: Tensor) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                return _grads(inner(gy, v.detach()), (x_, y_), retain_graph=True)

        def jvp(dx: Tensor, dy: Tensor) -> Tensor:
            with torch.enable_grad():
                if not transposed:
                    w = torch.zeros_like(gy, requires_grad=True)
                    transposed.extend([w, *_grads(inner(gy, w), (x_, y_), create_graph=True)])
                w, jx, jy = transposed
                (ju,) = _grads(inner(jx, dx.detach()) + inner(jy, dy.detach()), (w,), retain_graph=True)
            return ju
        return vjp, jvp

    def hvp_f(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """The Hessian of f (in x and y together) times (vx, vy)."""
        with torch.enable_grad():
            x_, y_ = _leaf(x), _leaf(y)
            gx, gy = _grads(self.objectives[0](x_, y_), (x_, y_), create_graph=True)
            return _grads(inner(gx, vx.detach()) + inner(gy, vy.detach()), (x_, y_))

    def hvp_h(self, x: Tensor, y: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """The Hessian of h = ||grad_y g||^2 times (vx, vy) (third derivatives of g)."""
        with torch.enable_grad():
            x_, y_, _, gy = self._grad_y_g_graph(x, y)
            r = lower_residual(y_, gy, self.y_bounds)
            hx, hy = _grads(inner(r, r), (x_, y_), create_graph=True)
            return _grads(inner(hx, vx.detach()) + inner(hy, vy.detach()), (x_, y_))

    def hvp_inner_grad_y_g(self, x: Tensor, y: Tensor, w: Tensor, vx: Tensor, vy: Tensor) -> tuple[Tensor, Tensor]:
        """The Hessian of `<grad_y g, w>` (w held fixed) times (vx, vy) (third derivatives of g).

        With w = grad_y g this is the third-order part of hvp_h:
        hvp_h(v) = 2 J^T J v + 2 hvp_inner_grad_y_g(grad_y g, v).
        """
        with torch.enable_grad():
            x_, y_, _, gy = self._grad_y_g_graph(x, y)
            jx, jy = _grads(inner(gy, w.detach()), (x_, y_), create_graph=True)
            return _grads(inner(jx, vx.detach()) + inner(jy, vy.detach()), (x_, y_))


# the jvp-based derivatives of Func, never compiled (see Func's `compile`)
FORWARD_MODE = ("jvp_grad_y_g", "hvp_f", "hvp_h", "hvp_inner_grad_y_g")


class SkinnyProducts:
    """An inductor graph pass (torch.compile's post_grad_custom_post_pass): every CPU matrix
    product C = A B (mm, addmm) with C narrow (at most `width` columns, fewer than its rows) is
    computed as C = (B^T A^T)^T, the same sums in another layout. MKL's single-precision kernels
    are slow on narrow outputs: on a linear 784 x 10 classifier at batch 64, one thread, a
    (64 x 784)(784 x 10) product and a (784 x 64)(64 x 10) one took 290-310 us together against
    73-84 us transposed, and the compiled soba step 0.92 ms against 0.37 ms
    (benchmarks/RESULTS.md, section "benchmark-bilevel-side-by-side"). `rewritten` counts the
    products it changed."""

    def __init__(self, width: int = 16):
        self.width, self.rewritten = width, 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        aten = torch.ops.aten
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default) or node.kwargs:
                continue
            a, b = node.args[-2:]
            va, vb = a.meta.get("val"), b.meta.get("val")
            if (va is None or vb is None or va.device.type != "cpu" or va.dim() != 2 or vb.dim() != 2
                    or not vb.shape[1] <= self.width < va.shape[0]):
                continue
            with graph.inserting_before(node), va.fake_mode:
                def add(target, args, value):
                    out = graph.call_function(target, args)
                    out.meta["val"] = value
                    return out
                bt = add(aten.permute.default, (b, [1, 0]), vb.permute(1, 0))
                at = add(aten.permute.default, (a, [1, 0]), va.permute(1, 0))
                ct = add(aten.mm.default, (bt, at), torch.mm(bt.meta["val"], at.meta["val"]))
                c = add(aten.permute.default, (ct, [1, 0]), ct.meta["val"].permute(1, 0))
                if node.target is aten.addmm.default:
                    c = add(aten.add.Tensor, (node.args[0], c), node.args[0].meta["val"] + c.meta["val"])
            node.replace_all_uses_with(c)
            graph.erase_node(node)
            self.rewritten += 1

    def uuid(self) -> str:
        return f"bilevel-skinny-products-{self.width}"


def _compile_options() -> dict[str, Any]:
    """The inductor options of the compiled back-end (one dict for the process): `SkinnyProducts`
    where this torch has custom graph passes, and no size and stride assertions at every call (16
    on pgdqp's fused step, 10% of its time at n = 20): dynamo's guards check the shapes and strides
    of torch.compile's inputs, `_Traced`'s signature those of its own."""
    if not COMPILE_OPTIONS:
        COMPILE_OPTIONS["size_asserts"] = False
        try:
            from torch._inductor.custom_graph_pass import CustomGraphPass
        except ImportError:
            return COMPILE_OPTIONS
        skinny = type("SkinnyProductsPass", (SkinnyProducts, CustomGraphPass), {})
        COMPILE_OPTIONS["post_grad_custom_post_pass"] = skinny()
    return COMPILE_OPTIONS


COMPILE_OPTIONS: dict[str, Any] = {}


def inductor(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
    """The torch.compile back-end of oracle="compiled": inductor with `_compile_options` applied
    while it compiles (torch.compile's options= would apply them again around every call, about
    as long as a small compiled step's arithmetic). One function for the process, so that what
    one run compiled the next reuses (dynamo's cache is per back-end)."""
    from torch._inductor.compile_fx import compile_fx
    return compile_fx(graph, example_inputs, config_patches=_compile_options())


def _runs_uncompiled(name: str, exc: Exception, failures: dict[str, str]) -> None:
    """Record in `failures` why `name` runs uncompiled from now on, and say so in a warning."""
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    failures[name] = reason
    warnings.warn(f"oracle='compiled': {name} runs uncompiled ({reason})", RuntimeWarning, stacklevel=5)


class _CompiledOrEager:
    """fn compiled by torch.compile, falling back for good to fn itself (with a warning that
    says why) the first time compilation or the compiled call fails."""

    def __init__(self, name: str, fn: Callable, failures: dict[str, str]):
        self.name, self.eager, self.failures = name, fn, failures
        self.compiled = torch.compile(fn, dynamic=False, backend=inductor)

    def __call__(self, *args: Tensor):
        if self.name not in self.failures:
            try:
                return self.compiled(*args)
            except Exception as exc:  # compilation is best-effort: the eager function is the reference
                _runs_uncompiled(self.name, exc, self.failures)
        return self.eager(*args)


def _flatten(tree: Any, leaves: list) -> Any:
    """The structure of nested plain tuples and lists, their other items appended to `leaves`
    (a fast torch.utils._pytree.tree_flatten for the arguments of a fused step)."""
    kind = type(tree)
    if kind is tuple or kind is list:
        return kind, tuple([_flatten(item, leaves) for item in tree])
    leaves.append(tree)
    return None


def _unflatten(structure: Any, leaves: Iterator) -> Any:
    """`_flatten` undone (or torch's tree_unflatten, where `structure` is its TreeSpec)."""
    if isinstance(structure, pytree.TreeSpec):
        return pytree.tree_unflatten(list(leaves), structure)
    if structure is None:
        return next(leaves)
    kind, items = structure
    return kind(_unflatten(item, leaves) for item in items)


_PLAIN = (int, float, bool, str, type(None))


def _signature(leaves: list, plain: bool = True) -> tuple | None:
    """What a graph is specialised to: the shape, strides, dtype, device and requires_grad of
    every tensor, the type and value of every other leaf; None where `plain` and a leaf is
    none of tensors and `_PLAIN` (a container `_flatten` does not open)."""
    signature = []
    for leaf in leaves:
        if isinstance(leaf, Tensor):
            signature.append((leaf.shape, leaf.stride(), leaf.dtype, leaf.device, leaf.requires_grad))
        elif plain and not isinstance(leaf, _PLAIN):
            return None
        else:
            signature.append((type(leaf), leaf))
    return tuple(signature)


_FLAT = "a flat tuple"   # the structure of a fused step's outputs that need no unflattening


class _Traced:
    """fn traced by make_fx into one functional graph per input signature and compiled by inductor
    without dynamo, falling back for good to fn itself (with a warning that says why) the first
    time tracing, compilation or the compiled call fails. Without dynamo no guards run at a call:
    on a fused minibatch step they cost 40-50 us of a 0.45 ms step (RESULTS "stochastic-compiled-
    notes"); the signature checked here instead is the structure of the arguments (nested tuples
    and lists) and the shape, strides, dtype and device of every tensor in them (other leaves are
    constants of the graph and part of the signature). `traces` counts the graphs made."""

    def __init__(self, name: str, fn: Callable, failures: dict[str, str]):
        self.name, self.eager, self.failures = name, fn, failures
        self.graphs: dict[Any, tuple[Callable, Any]] = {}
        self.traces = 0

    def _compile(self, leaves: list, structure: Any) -> tuple[Callable, Any]:
        from torch._inductor.compile_fx import compile_fx
        from torch.fx.experimental.proxy_tensor import make_fx
        tensors = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        out_structure = []

        def flat(*args: Tensor):
            filled = list(leaves)
            for i, t in zip(tensors, args):
                filled[i] = t
            out: list = []
            out_structure.append(_flatten(self.eager(*_unflatten(structure, iter(filled))), out))
            if not all(isinstance(t, Tensor) for t in out):
                raise TypeError("a fused step returns tensors in tuples and lists only")
            return tuple(out)
        inputs = [leaves[i] for i in tensors]
        # tensors in closures (the problem's data) are constants of the graph
        graph = make_fx(flat, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        self.traces += 1
        returned = out_structure[-1]
        flat_tuple = returned[0] is tuple and all(item is None for item in returned[1])
        return compile_fx(graph, inputs, config_patches=_compile_options()), _FLAT if flat_tuple else returned

    def __call__(self, *args: Any):
        if self.name not in self.failures:
            try:
                leaves: list = []
                structure = _flatten(args, leaves)
                signature = _signature(leaves)
                if signature is None:   # dicts, named tuples, ...
                    leaves, structure = pytree.tree_flatten(args)
                    signature = _signature(leaves, plain=False)
                graph = self.graphs.get((structure, signature))
                if graph is None:
                    graph = self.graphs[structure, signature] = self._compile(leaves, structure)
                run, out_structure = graph
                out = run(*[leaf for leaf in leaves if isinstance(leaf, Tensor)])
                return tuple(out) if out_structure is _FLAT else _unflatten(out_structure, iter(out))
            except Exception as exc:  # compilation is best-effort: the eager function is the reference
                _runs_uncompiled(self.name, exc, self.failures)
        return self.eager(*args)


class Func(Backend):
    """The derivatives of `Autograd`, built from torch.func transforms.

    They are pure functions of their tensor arguments, so they compose with torch.func.vmap
    (used by `bilevel.solve_batch`) and torch.compile. Hessian- and Jacobian-vector products
    are forward-over-reverse (`jvp` of `grad`). Eager, this is slower than `Autograd` on every
    problem measured (benchmarks/RESULTS.md). `unrolled_grad` (iaptt_gm) runs by autograd.

    Objectives of data (on_data=True: f(x, y, *data), g(x, y, *data), the minibatch objectives
    of `bilevel.core.data.Sampled`): every derivative takes the data as trailing arguments,
    and `on(*data)` is the back-end of f(., ., *data), g(., ., *data). Compiled, each derivative
    is then compiled once for every batch of one shape (the batches are inputs of the compiled
    graph, not constants of it).

    Args:
        f: the upper-level objective, (x, y) -> scalar tensor.
        g: the lower-level objective, (x, y) -> scalar tensor.
        y_bounds: the problem's y box, as for `Autograd`.
        compile: compile each derivative with torch.compile; one whose compilation fails runs
            uncompiled, and `compile_failures` (name -> reason) says why. The forward-mode
            products (`FORWARD_MODE`: Hessian- and Jacobian-vector products, used at the start
            and at logged iterations, not in pgdqp's step) always run uncompiled: torch 2.13's
            inductor hands the zero tangents of constants (efficient zero tensors) to its C++
            kernels, which crash the process (measured: a segmentation fault in hvp_f on
            synthetic-sc), and a crash cannot fall back.
        on_data: f and g take the data after (x, y) (see above).
    """

    def __init__(self, f: Objective, g: Objective, y_bounds: tuple | None = None, compile: bool = False,
                 on_data: bool = False):
        super().__init__(f, g, y_bounds)
        self.compiles, self.on_data = compile, on_data

        def grad_y_g(x: Tensor, y: Tensor, *data) -> Tensor:
            return grad(g, argnums=1)(x, y, *data)

        def h(x: Tensor, y: Tensor, *data) -> Tensor:
            r = lower_residual(y, grad_y_g(x, y, *data), y_bounds)
            return inner(r, r)

        def grad_f_xy(x: Tensor, y: Tensor, *data) -> tuple[Tensor, Tensor]:
            return grad(f, argnums=(0, 1))(x, y, *data)

        def grad_h_xy(x: Tensor, y: Tensor, *data) -> tuple[Tensor, Tensor]:
            return grad(h, argnums=(0, 1))(x, y, *data)

        def with_value(fn: Objective) -> Callable:
            def value_and_grads(x: Tensor, y: Tensor, *data) -> tuple[Tensor, Tensor, Tensor]:
                (gx, gy), value = grad_and_value(fn, argnums=(0, 1))(x, y, *data)
                return value, gx, gy
            return value_and_grads

        def h_and_grad(x: Tensor, y: Tensor, *data) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
            def h_with_parts(x: Tensor, y: Tensor):
                gy, value = grad_and_value(g, argnums=1)(x, y, *data)
                r = lower_residual(y, gy, y_bounds)
                return inner(r, r), (value, gy)
            (hx, hy), (h, (value, gy)) = grad_and_value(h_with_parts, argnums=(0, 1), has_aux=True)(x, y)
            return value, gy, h, hx, hy

        def grad_g_x(x: Tensor, y: Tensor, *data) -> Tensor:
            return grad(g, argnums=0)(x, y, *data)

        def vjp_grad_y_g(x: Tensor, y: Tensor, v: Tensor, *data) -> tuple[Tensor, Tensor]:
            return vjp(lambda x, y: grad_y_g(x, y, *data), x, y)[1](v)

        def grad_y_g_and_vjp(x: Tensor, y: Tensor, v: Tensor, *data) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            gy, pullback, value = vjp(lambda x, y: grad_and_value(g, argnums=1)(x, y, *data), x, y, has_aux=True)
            return (value, gy, *pullback(v))

        def jvp_grad_y_g(x: Tensor, y: Tensor, dx: Tensor, dy: Tensor, *data) -> Tensor:
            return jvp(lambda x, y: grad_y_g(x, y, *data), (x, y), (dx, dy))[1]

        def hvp_f(x: Tensor, y: Tensor, vx: Tensor, vy: Tensor, *data) -> tuple[Tensor, Tensor]:
            return jvp(lambda x, y: grad_f_xy(x, y, *data), (x, y), (vx, vy))[1]

        def hvp_h(x: Tensor, y: Tensor, vx: Tensor, vy: Tensor, *data) -> tuple[Tensor, Tensor]:
            return jvp(lambda x, y: grad_h_xy(x, y, *data), (x, y), (vx, vy))[1]

        def hvp_inner_grad_y_g(x: Tensor, y: Tensor, w: Tensor, vx: Tensor, vy: Tensor,
                               *data) -> tuple[Tensor, Tensor]:
            grad_inner = grad(lambda x, y: inner(grad_y_g(x, y, *data), w), argnums=(0, 1))
            return jvp(grad_inner, (x, y), (vx, vy))[1]

        pure = {"grad_f": with_value(f), "grad_g": with_value(g), "grad_g_y": grad_y_g, "grad_g_x": grad_g_x,
                "h_and_grad": h_and_grad, "vjp_grad_y_g": vjp_grad_y_g, "grad_y_g_and_vjp": grad_y_g_and_vjp,
                "jvp_grad_y_g": jvp_grad_y_g, "hvp_f": hvp_f, "hvp_h": hvp_h, "hvp_inner_grad_y_g": hvp_inner_grad_y_g}
        self.eager = dict(pure)
        self.compile_failures: dict[str, str] = {}
        self.fused: dict[Callable, Callable] = {}
        if compile:
            pure = {name: fn if name in FORWARD_MODE else _CompiledOrEager(name, fn, self.compile_failures)
                    for name, fn in pure.items()}
        self.pure = pure

    def __getattr__(self, name: str) -> Callable:
        pure = self.__dict__.get("pure", {})
        if name not in pure:
            raise AttributeError(name)

        def call(*args: Tensor):
            return pure[name](*(a.detach() for a in args))
        return call

    def on(self, *data: Any) -> OnData:
        """The back-end of f(., ., *data) and g(., ., *data) (on_data=True), sharing this one's
        (compiled) derivatives."""
        return OnData(self, data)

    def fuse(self, fn: Callable) -> Callable:
        """tensors -> fn(ops, *tensors), with ops an object whose methods are the derivatives of
        this back-end (`ops.grad_f(x, y)`, ...): compiled into one graph where this back-end
        compiles (once per fn, for all data of one shape; a failure is reported in
        `compile_failures`), else run as it is. Derivatives inside are not counted (the caller
        counts)."""
        whole = self.whole(fn)
        return lambda *tensors: whole(tuple(t.detach() if t.requires_grad else t for t in tensors), ())

    def whole(self, fn: Callable) -> Callable:
        """fn as a function of (tensors, data), compiled where this back-end compiles (cached)."""
        if fn not in self.fused:
            def whole(tensors: tuple, data: tuple):
                return fn(_Ops(self.eager, data), *tensors)
            self.fused[fn] = _Traced("fused step", whole, self.compile_failures) if self.compiles else whole
        return self.fused[fn]


class _Ops:
    """The derivatives `pure` (name -> function of tensors, then data) on fixed data, as methods."""

    def __init__(self, pure: dict[str, Callable], data: tuple):
        self.pure, self.data = pure, data

    def __getattr__(self, name: str) -> Callable:
        pure, data = self.__dict__["pure"], self.__dict__["data"]
        if name not in pure:
            raise AttributeError(name)
        return lambda *args: pure[name](*args, *data)


class OnData(Backend):
    """A `Func` of objectives of data on fixed data (`Func.on`): its derivatives with the data
    appended to every call; f and g (values), unrolled_grad and `fuse` likewise."""

    def __init__(self, func: Func, data: tuple):
        f, g = func.objectives
        super().__init__(lambda x, y: f(x, y, *data), lambda x, y: g(x, y, *data), func.y_bounds)
        self.func, self.data = func, data

    @property
    def compile_failures(self) -> dict[str, str]:
        return self.func.compile_failures

    @property
    def compiles(self) -> bool:
        return self.func.compiles

    def fuse(self, fn: Callable) -> Callable:
        """`Func.fuse` on this data: tensors -> fn(ops, *tensors)."""
        whole = self.func.whole(fn)
        return lambda *tensors: whole(tuple(t.detach() if t.requires_grad else t for t in tensors), self.data)

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("_") or "func" not in self.__dict__:
            raise AttributeError(name)
        pure, data = self.__dict__["func"].pure, self.__dict__["data"]
        if name not in pure:
            raise AttributeError(name)
        return lambda *args: pure[name](*(a.detach() for a in args), *data)


def backend(kind: str, f: Objective, g: Objective, y_bounds: tuple | None = None, on_data: bool = False):
    """The back-end named `kind` ("autograd", "func" or "compiled") for f and g (and a y box).

    on_data=True: f and g take data after (x, y), and the answer is a back-end whose `on(*data)`
    is the back-end on that data (`Func.on`), built once for every batch; None where the kind
    gains nothing from that (autograd: rebuilt per batch, as cheap)."""
    if kind == "autograd":
        return None if on_data else Autograd(f, g, y_bounds)
    if kind in ("func", "compiled"):
        return Func(f, g, y_bounds, compile=kind == "compiled", on_data=on_data)
    raise ValueError(f"Invalid oracle: {kind!r} (expected one of {', '.join(map(repr, BACKENDS))} or an Oracle)")


def _counted(name: str) -> Callable:
    """An Oracle method: ask the back-end, count the call by COSTS[name]."""
    cost = COSTS[name]

    def method(self: "Oracle", *args: Tensor):
        self.counts.update(cost)
        return getattr(self.backend, name)(*args)
    method.__name__ = name
    method.__doc__ = getattr(Autograd, name).__doc__
    return method


class Oracle:
    """Values, gradients and second-order products of f and g, with call counts.

    Args:
        backend: what differentiates: `Autograd(f, g)`, `Func(f, g)`,
            `bilevel.distributed.Reduced(...)`: any object with the methods of `Autograd`.

    Example:
        >>> import torch
        >>> oracle = Oracle(Autograd(lambda x, y: (x * y).sum(), lambda x, y: (y ** 2).sum()))
        >>> oracle.grad_f(torch.ones(2), torch.zeros(2))[2]
        tensor([1., 1.])
        >>> oracle.snapshot()["n_grad_f"]
        1
    """

    def __init__(self, backend):
        self.backend = backend
        self.steps: dict[Any, Callable] = {}
        self.calls: dict[Any, Callable] = {}       # `fused`'s counted calls on full data, by key
        self.counts: Counter[str] = Counter()
        self.reset()

    f = _counted("f")
    g = _counted("g")
    grad_f = _counted("grad_f")
    grad_g = _counted("grad_g")
    grad_g_y = _counted("grad_g_y")
    grad_g_x = _counted("grad_g_x")
    h_and_grad = _counted("h_and_grad")
    vjp_grad_y_g = _counted("vjp_grad_y_g")
    jvp_grad_y_g = _counted("jvp_grad_y_g")
    hvp_f = _counted("hvp_f")
    hvp_h = _counted("hvp_h")
    hvp_inner_grad_y_g = _counted("hvp_inner_grad_y_g")

    def grad_y_g_and_vjp(self, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(g, grad_y g, grad_yx g^T v, grad_yy g v) from one graph of grad_y g (a back-end
        without the fused call makes two), counted as grad_g and vjp_grad_y_g are: one
        gradient of g and one second-order product."""
        self.counts.update(n_grad_g=1, n_hvp=1)
        fused = getattr(self.backend, "grad_y_g_and_vjp", None)
        if fused is None:
            value, _, gy = self.backend.grad_g(x, y)
            return (value, gy, *self.backend.vjp_grad_y_g(x, y, v))
        return fused(x, y, v)

    @property
    def fuses(self) -> bool:
        """Whether `fused` compiles (oracle="compiled", in one process)."""
        return getattr(self.backend, "compiles", False) is True and callable(getattr(self.backend, "fuse", None))

    def fused(self, key: Any, make: Callable[[], Callable], **cost: int) -> Callable:
        """tensors -> fn(ops, *tensors) as one call of the back-end (`Func.fuse`: one compiled graph
        where it compiles), with fn = make() the first time `key` is asked of this oracle (so that
        one function is compiled once for a run) and ops the back-end's derivatives on the current
        batches; each call counted as `cost` (n_grad_f=1, ...)."""
        if key in self.calls:
            return self.calls[key]
        if key not in self.steps:
            self.steps[key] = make()
        whole = self.backend.fuse(self.steps[key])

        def call(*tensors: Tensor):
            self.counts.update(cost)
            return whole(*tensors)
        if not self.stochastic:   # (on minibatches, fuse binds the current batches: made anew each time)
            self.calls[key] = call
        return call

    def lower_jacobian(self, x: Tensor, y: Tensor) -> tuple[Callable, Callable]:
        """(w -> `vjp_grad_y_g`(x, y, w), (dx, dy) -> `jvp_grad_y_g`(x, y, dx, dy)) at a fixed point,
        each call counted as those are: from graphs built once where the back-end can
        (`Autograd.linearize_grad_y_g`), else call by call."""
        linearize = getattr(self.backend, "linearize_grad_y_g", None)
        if linearize is None:
            return (lambda w: self.vjp_grad_y_g(x, y, w)), (lambda dx, dy: self.jvp_grad_y_g(x, y, dx, dy))
        vjp, jvp = linearize(x, y)

        def counted_vjp(w: Tensor) -> tuple[Tensor, Tensor]:
            self.counts.update(COSTS["vjp_grad_y_g"])
            return vjp(w)

        def counted_jvp(dx: Tensor, dy: Tensor) -> Tensor:
            self.counts.update(COSTS["jvp_grad_y_g"])
            return jvp(dx, dy)
        return counted_vjp, counted_jvp

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
        f(x, y_p) through them in x and z (see the module function `unrolled_grad`).

        Counts: T gradients of g (with graph), T values of f, one gradient of f at (x, y_p)
        and p second-order products (the backward through p steps).
        """
        run = self.backend.unrolled_grad(x, z, steps, step_size, project, select)
        self.counts.update(n_grad_g=steps, n_f=steps, n_grad_f=1, n_hvp=run.index)
        return run

    def lower_objective(self, x: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """y -> (g(x, y), grad_y g(x, y)) at a fixed x (counted as gradients of g): the lower
        level as the function of y that `bilevel.core.lower.minimize` takes."""
        def value_and_grad(y: Tensor) -> tuple[Tensor, Tensor]:
            value, _, grad_y = self.grad_g(x, y)
            return value, grad_y
        return value_and_grad

    @property
    def stochastic(self) -> bool:
        """Whether the back-end evaluates minibatches (`bilevel.core.data.Sampled`)."""
        return bool(getattr(self.backend, "sampled", False))

    def resample(self, which: str = "both") -> None:
        """Draw new minibatches: "both", "upper" (f's) or "lower" (g's); nothing on full data."""
        if self.stochastic:
            self.backend.resample(which)

    @property
    def batches(self) -> Any:
        """The current (upper, lower) minibatches (None on full data); set them to go back to
        batches drawn before (an estimator that needs two independent batches)."""
        return self.backend.batches if self.stochastic else None

    @batches.setter
    def batches(self, value: Any) -> None:
        if self.stochastic:
            self.backend.batches = value

    @property
    def indices(self) -> tuple[Tensor | None, Tensor | None] | None:
        """The sample indices of the current (upper, lower) minibatches (None on full data): for
        estimators with per-sample or per-group memories (SABA)."""
        return self.backend.indices if self.stochastic else None

    @property
    def data_sizes(self) -> tuple[int, int] | None:
        """The numbers of (upper, lower) samples minibatches are drawn from, over all the ranks of a
        data-parallel run (None on full data)."""
        return tuple(self.backend.totals) if self.stochastic else None

    def select(self, upper: Tensor | None = None, lower: Tensor | None = None) -> None:
        """Make the minibatches those of the samples at these indices (None keeps a level's
        batch); nothing on full data."""
        if self.stochastic:
            self.backend.select(upper, lower)

    def reset(self) -> None:
        """Counts back to zero."""
        self.counts.clear()
        self.counts.update({name: 0 for name in COUNTERS})

    def snapshot(self) -> dict[str, int]:
        """The call counts so far, with their total as `oracle_calls`."""
        out = {name: int(self.counts[name]) for name in COUNTERS}
        out["oracle_calls"] = sum(out.values())
        return out

    @contextlib.contextmanager
    def uncounted(self) -> Iterator["Oracle"]:
        """Calls inside the block leave the counts as they were (diagnostics, metrics)."""
        before = Counter(self.counts)
        try:
            yield self
        finally:
            self.counts.clear()
            self.counts.update(before)

    def fork(self) -> "Oracle":
        """An oracle on the same back-end with counts of its own (from zero)."""
        return Oracle(self.backend)


def depends_on(fn: Objective, x: Tensor, y: Tensor) -> tuple[bool, bool]:
    """Whether fn(x, y) depends on x and on y at this point (through autograd's graph)."""
    with torch.enable_grad():
        x_, y_ = _leaf(x), _leaf(y)
        out = fn(x_, y_)
        if not isinstance(out, Tensor) or not out.requires_grad:
            return False, False
        gx, gy = torch.autograd.grad(out.sum(), (x_, y_), allow_unused=True)
    return gx is not None, gy is not None


def flat_in_y(g: Objective, x: Tensor, y: Tensor) -> bool:
    """Whether grad_y g and grad_yy g v (v a fixed random direction) are both exactly zero at (x, y)."""
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype).to(y.device)
    with torch.enable_grad():
        x_, y_ = _leaf(x), _leaf(y)
        (gy,) = _grads(g(x_, y_), (y_,), create_graph=True)
        (hv,) = _grads(inner(gy, v), (y_,))
    return not bool(gy.any()) and not bool(hv.any())
