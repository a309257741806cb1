"""Dependency-aware channel groups: which layers must lose the same output channels together.

Removing output channel ``c`` of a convolution is only sound when every layer coupled to it loses ``c``
too: the BatchNorm on those channels, every branch of a residual add that sums into them, and every
layer that reads them (its input channel ``c``). DepGraph (Fang et al. 2023, "DepGraph: Towards Any
Structural Pruning", CVPR) groups such coupled parameters by walking the network's graph; this module
does the same, in a deliberately small form, on the ``torch.fx`` trace of the float network:

- a Conv2d (``groups == 1``) or Linear *produces* a new channel space (its ``weight`` dim 0) and
  *consumes* its input's (``weight`` dim 1);
- BatchNorm, zero-preserving activations (ReLU, GELU, SiLU...), pooling, Identity and Dropout keep the
  channel space; a flatten keeps it only after a global pool (one feature per channel);
- an add of two tensors merges their spaces (the residual coupling);
- anything else (concatenation, attention, grouped convolutions, functional norms, the network's input
  and output) fixes the spaces it touches: they are never pruned.

Every rule keeps a removed channel at exactly zero all the way to its readers, so the network with
the channels removed computes what the masked dense network computes (up to float summation order).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

_KEEP_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.Tanh, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d)
_KEEP_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.hardswish, torch.tanh, F.dropout, F.max_pool2d, F.avg_pool2d}
_KEEP_METHODS = {"relu", "relu_", "contiguous", "clone"}
_ADDS = {operator.add, operator.iadd, torch.add}


@dataclass
class ChannelGroup:
    """Coupled output channels: prune channel ``c`` of one member, prune it of all.

    ``producers``: modules whose output channels these are (``weight`` dim 0, and ``bias``);
    ``norms``: BatchNorm modules on them; ``consumers``: modules reading them (``weight`` dim 1).
    Names are ``named_modules`` names of the network given to :func:`channel_groups`."""

    channels: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)


class _Spaces:
    """Union-find over channel spaces, each with its member layers, and a flag for fixed spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.groups: list[ChannelGroup] = []

    def new(self, channels: int, *, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        self.groups.append(ChannelGroup(channels))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        lo, hi = min(ra, rb), max(ra, rb)  # the older space absorbs the newer: a deterministic member order
        self.parent[hi] = lo
        g, h = self.groups[lo], self.groups[hi]
        self.fixed[lo] = self.fixed[lo] or self.fixed[hi] or g.channels != h.channels
        g.producers += h.producers
        g.norms += h.norms
        g.consumers += h.consumers
        return lo

    def fix(self, i: int) -> None:
        self.fixed[self.find(i)] = True


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes]


def channel_groups(net: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of ``net`` (see the module docstring), in graph order.

    Raises ``torch.fx``'s errors when the network cannot be traced symbolically."""
    graph = fx.symbolic_trace(net).graph
    modules = dict(net.named_modules())
    spaces = _Spaces()
    space: dict[fx.Node, int] = {}  # a tensor node's channel space (dim 1)
    flat: set[fx.Node] = set()  # nodes whose spatial extent is 1 x 1, or already flattened to [N, C]
    seen: set[str] = set()

    def fix_inputs(node: fx.Node) -> None:
        for a in _tensor_args(node):
            if a in space:
                spaces.fix(space[a])

    for node in graph.nodes:
        args = [a for a in _tensor_args(node) if a in space]
        if node.op == "placeholder":
            space[node] = spaces.new(0, fixed=True)
            continue
        if node.op == "output":
            fix_inputs(node)
            continue
        if node.op == "call_module":
            module = modules[node.target]
            name = str(node.target)
            if len(args) != 1 or len(node.all_input_nodes) != 1 or name in seen and not isinstance(module, _KEEP_MODULES):
                fix_inputs(node)
                space[node] = spaces.new(0, fixed=True)
                continue
            (src,) = args
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                seen.add(name)
                linear = isinstance(module, nn.Linear)
                fits = (src in flat) if linear else (src not in flat and module.groups == 1)
                if not fits or spaces.groups[spaces.find(space[src])].channels not in (0, module.weight.shape[1]):
                    spaces.fix(space[src])
                else:
                    spaces.groups[spaces.find(space[src])].consumers.append(name)
                out = spaces.new(module.weight.shape[0], fixed=not fits)
                spaces.groups[out].producers.append(name)
                space[node] = out
                if linear:
                    flat.add(node)
                continue
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                seen.add(name)
                spaces.groups[spaces.find(space[src])].norms.append(name)
                space[node] = space[src]
                if src in flat:
                    flat.add(node)
                continue
            if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and module.output_size in (1, (1, 1)):
                space[node] = space[src]
                flat.add(node)
                continue
            if isinstance(module, nn.Flatten) and src in flat and module.start_dim == 1:
                space[node] = space[src]
                flat.add(node)
                continue
            if isinstance(module, _KEEP_MODULES):
                space[node] = space[src]
                if src in flat:
                    flat.add(node)
                continue
        elif node.op == "call_function" and node.target in _ADDS and len(args) == 2 and len(node.args) == 2 and not node.kwargs:
            merged = spaces.union(space[args[0]], space[args[1]])
            space[node] = merged
            if args[0] in flat and args[1] in flat:
                flat.add(node)
            continue
        elif len(args) == 1 and (
            (node.op == "call_function" and node.target in _KEEP_FUNCTIONS and node.args[0] is args[0])
            or (node.op == "call_method" and node.target in _KEEP_METHODS)
        ):
            space[node] = space[args[0]]
            if args[0] in flat:
                flat.add(node)
            continue
        elif node.op == "call_function" and node.target is torch.flatten and len(args) == 1 and args[0] in flat and node.args[1:] in ((1,), ()):
            space[node] = space[args[0]]
            flat.add(node)
            continue
        # Anything else touches its inputs' channels in ways we do not model: fix them and its output.
        fix_inputs(node)
        space[node] = spaces.new(0, fixed=True)
    roots = sorted({spaces.find(i) for i in range(len(spaces.parent))})
    return [spaces.groups[r] for r in roots if not spaces.fixed[r] and spaces.groups[r].producers and spaces.groups[r].channels > 1]
