"""A torch.nn.Module evaluated at parameters held in one flat vector (so y can be a network)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call


class FlatModule:
    """Evaluate `module` at a flat parameter vector: `FlatModule(net)(theta, inputs)`.

    Example:
        >>> net = FlatModule(torch.nn.Linear(3, 2))
        >>> theta = net.flatten()            # the module's current parameters, shape (8,)
        >>> net(theta, torch.ones(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise TypeError(f"Invalid module: {type(module).__name__} (expected a torch.nn.Module)")
        self.module = module
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.numel = sum(self.sizes)

    def flatten(self) -> Tensor:
        """The module's parameters as one detached vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Name -> view of `theta` with that parameter's shape."""
        if theta.dim() != 1 or theta.numel() != self.numel:
            raise ValueError(f"Invalid theta: shape {tuple(theta.shape)} (expected ({self.numel},))")
        return {name: chunk.view(shape)
                for name, chunk, shape in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def __call__(self, theta: Tensor, *inputs: Tensor) -> Tensor:
        return functional_call(self.module, self.unflatten(theta), inputs)
