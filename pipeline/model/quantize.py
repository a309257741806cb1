"""Int8 post-training static quantization as an export transform (CPU, fbgemm backend).

Conv2d and Linear layers (with their BatchNorm folded and ReLU fused) run as int8 kernels
(PyTorch's ``fbgemm`` quantized engine): weights per-channel symmetric int8,
activations per-tensor affine uint8 with ranges from a histogram observer calibrated on retained
samples (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR; Krishnamoorthi 2018, arXiv:1806.08342). Pooling, adds
and the classifier head's reshape run on quantized tensors too; only the input quantize and the
output dequantize are float. We use PyTorch's FX graph-mode flow (``torch.ao.quantization``):
measured here, torchao 0.18's ``quantize_`` rejects Conv2d and its PT2E flow is slower than fp32
on this CPU (docs/compression.md).

The transform component stores only the calibrated observer state (safetensors); composing
re-runs ``prepare -> load observers -> convert`` on the float network, which is deterministic,
so the same manifest gives the same int8 model. The engine is part of that: the transform records it
(``meta.backend``) and composing converts under the recorded engine.

Why fbgemm: measured on this machine's CPU (one thread, `test_resnet`, 1x16x16 and 3x32x32 inputs),
PyTorch's ``x86`` engine made batch 1 1.15-1.5x *slower* than fp32 (as slow as ``onednn``), while
``fbgemm`` ran batch 1 at 0.44-0.55x and batch 64 at 0.25x with the same predictions (``ume bench
compress`` records the served champion's figures). Transforms made with ``x86`` before keep it.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from pipeline.core.errors import ConfigError
from pipeline.model.routing import RoutedNetwork

warnings.filterwarnings("ignore", message=r".*torch.ao.quantization is deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
# torch 2.14's FX observers and quantized convolutions warn at every call about their own future API.
warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max to specify the range", category=UserWarning)
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other", category=UserWarning)

BACKEND = "fbgemm"  # the engine new transforms are calibrated and converted for
BACKENDS = ("fbgemm", "x86")  # engines a stored transform may name (x86: transforms made before fbgemm was the default)
OBSERVER_KEY = "activation_post_process"


def _prepare(net: nn.Module, example: torch.Tensor, backend: str = BACKEND) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    if backend not in BACKENDS:
        raise ValueError(f"unknown quantized engine {backend!r} (known: {', '.join(BACKENDS)})")
    torch.backends.quantized.engine = backend  # kernels are packed for the engine current at conversion
    return prepare_fx(copy.deepcopy(net).eval(), get_default_qconfig_mapping(backend), (example,))


def check_quantizable(net: nn.Module, input_shape: tuple[int, ...], *, file: str, field: str) -> None:
    """Refuse, naming the field, a network FX post-training quantization cannot trace.

    FX needs a symbolically traceable forward: data-dependent control flow (for example timm's
    ViT attention and position-embedding paths) is not. Checked before a step writes anything.
    """
    from torch.fx.proxy import TraceError

    if isinstance(net, RoutedNetwork):  # the router stays float; every expert is the same architecture
        net = net.experts[0]
    try:
        _prepare(net, torch.zeros(1, *input_shape))
    except (TraceError, NotImplementedError, TypeError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ConfigError(
            f"int8 FX quantization cannot trace {type(net).__name__} ({type(exc).__name__}: {first}); "
            "remove the quantize step for this architecture (prune still applies)",
            file=file,
            field=field,
        ) from None


def calibrate(net: nn.Module, images: torch.Tensor, batch_size: int = 256, backend: str = BACKEND) -> dict[str, torch.Tensor]:
    """Observer state (activation ranges) of ``net`` on calibration ``images``.

    A routed network calibrates each expert on the images its router sends there (all of them when
    it is sent none), under the keys ``experts.<i>.``."""
    if isinstance(net, RoutedNetwork):
        with torch.no_grad():
            choice = net.router(images)
        state: dict[str, torch.Tensor] = {}
        for i, expert in enumerate(net.experts):
            mine = images[choice == i]
            for k, v in calibrate(expert, mine if len(mine) else images, batch_size, backend).items():
                state[f"experts.{i}.{k}"] = v
        return state
    prepared = _prepare(net, images[:1], backend)
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            prepared(images[i : i + batch_size])
    return {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items() if OBSERVER_KEY in k}


class Int8Network(nn.Module):
    """The converted int8 graph, served through a frozen TorchScript trace of it.

    The FX graph (``graph``) holds the state dict (what ``weights_hash`` and ``model_bytes`` read). At
    batch 1 its Python dispatch (about forty module calls) costs several times the int8 kernels
    themselves, so the forward runs a frozen TorchScript trace of the same graph: the same kernels in
    the same order, checked at construction to give bit-identical outputs on two batch sizes, else the
    graph runs as it is. The trace is a cache of the graph, not part of the recipe: it is rebuilt on
    every composition and never stored.

    Its kernels allocate outputs with an op PyTorch flags as non-deterministic (``quantized_resize_cpu_``),
    which a Lightning ``deterministic=True`` run earlier in the process would turn into an error; the
    result does not depend on it, so the flag is lifted for the forward pass only."""

    def __init__(self, graph: nn.Module, example: torch.Tensor | None = None) -> None:
        super().__init__()
        self.graph = graph
        self._fast: tuple[nn.Module, ...] = () if example is None else _traced(graph, example)  # a tuple: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Int8 inference on float input (quantize in, dequantize out)."""
        enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(False)
        try:
            return self._fast[0](x) if self._fast else self.graph(x)
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _traced(graph: nn.Module, example: torch.Tensor) -> tuple[nn.Module, ...]:
    """``(frozen trace,)`` of ``graph`` when it reproduces the graph bit for bit at batch 1 and 3, else ``()``."""
    probe = torch.linspace(-1.0, 1.0, 3 * example[:1].numel()).reshape(3, *example.shape[1:])
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit warns that it is deprecated in favour of torch.compile, which has no int8 CPU convolutions
            traced = torch.jit.freeze(torch.jit.trace(graph.eval(), probe[:1], check_trace=False).eval())
            if all(torch.equal(traced(batch), graph(batch)) for batch in (probe[:1], probe)):
                return (traced,)
    except (RuntimeError, TypeError, ValueError, AssertionError):
        pass
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    return ()


def quantize(net: nn.Module, observers: dict[str, torch.Tensor], example: torch.Tensor, backend: str = BACKEND) -> nn.Module:
    """The int8 network of float ``net`` with stored observer state (a routed network: each expert), for ``backend``."""
    if isinstance(net, RoutedNetwork):
        prefixes = [f"experts.{i}." for i in range(len(net.experts))]
        stray = [k for k in observers if not k.startswith(tuple(prefixes))]
        if stray:
            raise ValueError(f"observer state does not fit this routed network: {stray[:3]}")
        experts = [
            quantize(e, {k.removeprefix(pre): v for k, v in observers.items() if k.startswith(pre)}, example, backend)
            for e, pre in zip(net.experts, prefixes, strict=True)
        ]
        return RoutedNetwork(experts, net.router).eval()
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = _prepare(net, example, backend)
    result = prepared.load_state_dict(observers, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"observer state does not fit this network: {result.unexpected_keys[:3]}")
    return Int8Network(convert_fx(prepared), example).eval()


def model_bytes(net: nn.Module) -> int:
    """Bytes of every tensor in the state dict (int8 weights count one byte each)."""
    total = 0
    for value in net.state_dict().values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total
