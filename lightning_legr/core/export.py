"""ONNX export of a (pruned) network, checked against PyTorch on a batch, and its onnxruntime latency.

The exporter is ``torch.export`` (non-strict: the model's Python runs, so the forward hooks that replay
a pruned ``F.pad`` / ``torch.cat`` shortcut run too) followed by ``torch.onnx``'s translation of the
exported program (which needs ``onnxscript``). The TorchScript exporter (``dynamo=False``) is not used:
it refuses a pruned model, whose state dict carries the pruning record, and is deprecated. The batch
axis is dynamic; every other dimension is fixed to the example's. ``onnx``, ``onnxruntime`` and
``onnxscript`` are an optional extra: ``pip install "lightning-legr[onnx]"``.
"""

import copy
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from lightning_legr.core._io import PathLike, atomic_path
from lightning_legr.core.errors import ConfigurationError
from lightning_legr.core.graph import _STATE_ATTR
from lightning_legr.core.latency import BenchmarkTimer, Timing
from lightning_legr.core.structure import ExampleInputs, batch_of, map_tensors, run_model

__all__ = [
    "ExportError", "ExportReport", "OnnxRunner", "export_onnx", "check_onnx", "onnx_latency", "require_onnx",
    "INSTALL", "ATOL",
]

INSTALL = 'pip install "lightning-legr[onnx]"'
ATOL = 1e-4  # the largest difference from the PyTorch outputs an exported model may show
_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


class ExportError(ConfigurationError):
    """A model that cannot be exported to ONNX, or whose ONNX model does not compute what it computes."""


@dataclass
class ExportReport:
    """What an export (or the check of an existing file) found.

    Attributes:
        path: the ONNX file.
        max_abs_diff: the largest absolute difference between onnxruntime's and PyTorch's outputs, over
            the check batch and the example itself (batch 1).
        check_batch: the size of the check batch.
        opset: the default-domain opset of the file.
    """

    path: str
    max_abs_diff: float
    check_batch: int
    opset: int


def require_onnx(what: str = "Exporting to ONNX") -> None:
    """Raise, naming what to install, unless ``onnx``, ``onnxruntime`` and ``onnxscript`` import.

    Raises:
        ConfigurationError: ``"... needs onnx, onnxruntime and onnxscript (missing: onnxruntime):
            pip install "lightning-legr[onnx]""``.
    """
    missing = []
    for name in _PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigurationError(
            f"{what} needs onnx, onnxruntime and onnxscript (missing: {', '.join(missing)}): {INSTALL}"
        )


class OnnxRunner:
    """An onnxruntime session on the CPU, called like the model it was exported from (a tensor, positional
    tensors or keyword tensors); returns the list of outputs as numpy arrays.

    Args:
        path: the ONNX file.
        threads: onnxruntime's intra-op threads (its inter-op threads: one, the graph runs sequentially).
    """

    def __init__(self, path: PathLike, threads: int = 1) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigurationError(f"`threads` must be a positive integer, got {threads!r}")
        require_onnx("Running an ONNX model")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        self.path, self.threads = os.fspath(path), threads
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __repr__(self) -> str:
        return f"OnnxRunner({self.path!r}, threads={self.threads})"

    def __call__(self, *args: Any, **kwargs: Any) -> List[np.ndarray]:
        tensors = _tensors((args, kwargs))
        if len(tensors) != len(self.input_names):
            raise ValueError(
                f"{self.path} takes {len(self.input_names)} tensors ({', '.join(self.input_names)}), got {len(tensors)}"
            )
        feeds = {name: t.detach().cpu().contiguous().numpy() for name, t in zip(self.input_names, tensors)}
        return self.session.run(None, feeds)


def export_onnx(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: PathLike,
    opset: Optional[int] = None,
    check_batch: int = 8,
    atol: float = ATOL,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` and check the file against PyTorch.

    A copy of the model, in eval mode on the CPU, is exported with a dynamic batch axis, in one file
    (weights included). onnxruntime then runs it on a check batch of ``check_batch`` samples (the
    example, and the example plus Gaussian noise of its own spread, drawn with ``seed``) and on the
    example alone, and the outputs are compared with the model's. The file is written atomically:
    after a failure there is none, not half of one.

    Args:
        model: the network (pruned or not; a LightningModule works).
        example_inputs: what the model is called with, at batch 1 (see ``run_model``).
        path: where the ``.onnx`` file goes.
        opset: the ONNX opset; ``None``: the exporter's default.
        check_batch: the size of the check batch.
        atol: the largest absolute difference accepted.
        seed: seed of the check batch's noise.

    Raises:
        ConfigurationError: if ``onnx``, ``onnxruntime`` or ``onnxscript`` is missing (the message says what
            to install).
        ExportError: if the model cannot be exported (naming the module whose forward failed, and what to
            do) or if its outputs differ from PyTorch's by more than ``atol`` (with the figure).

    Example::

        >>> import tempfile
        >>> from lightning_legr import prune
        >>> from lightning_legr.models import cifar_resnet
        >>> model, x = cifar_resnet(20), torch.randn(1, 3, 32, 32)
        >>> with tempfile.TemporaryDirectory() as folder:  # doctest: +SKIP
        ...     report = export_onnx(prune(model, x, flops=0.5), x, f"{folder}/model.onnx")
        >>> report.max_abs_diff < 1e-4  # doctest: +SKIP
        True
    """
    require_onnx()
    if isinstance(check_batch, bool) or not isinstance(check_batch, int) or check_batch < 1:
        raise ConfigurationError(f"`check_batch` must be an integer >= 1, got {check_batch!r}")
    network = copy.deepcopy(model).cpu().eval()
    example = map_tensors(example_inputs, lambda t: t.detach().cpu())
    batch = _check_inputs(example, check_batch, seed)
    program = _export(network, batch, opset)
    with atomic_path(path) as tmp:
        with _quiet():
            program.save(tmp, external_data=False)
        report = _compare(network, example, batch, tmp, atol)
    return ExportReport(os.fspath(path), report[0], check_batch, report[1])


def check_onnx(
    model: nn.Module, example_inputs: ExampleInputs, path: PathLike, check_batch: int = 8, atol: float = ATOL,
    seed: int = 0,
) -> ExportReport:
    """Check an ONNX file made by :func:`export_onnx` against ``model``, without exporting again.

    Raises:
        ExportError: if the file's outputs differ from the model's by more than ``atol`` or do not match
            them in number or shape (it belongs to another model), or if onnxruntime cannot load it.
    """
    require_onnx("Checking an ONNX model")
    network = copy.deepcopy(model).cpu().eval()
    example = map_tensors(example_inputs, lambda t: t.detach().cpu())
    diff, opset = _compare(network, example, _check_inputs(example, check_batch, seed), os.fspath(path), atol)
    return ExportReport(os.fspath(path), diff, check_batch, opset)


def onnx_latency(
    path: PathLike,
    example_inputs: ExampleInputs,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 1,
    rounds: int = 5,
    min_run_time: float = 0.1,
    warmup: float = 0.2,
) -> Dict[int, Timing]:
    """onnxruntime's CPU latency of an ONNX file at each batch size: the median over ``rounds`` rounds of
    :mod:`torch.utils.benchmark`'s ``blocked_autorange`` medians, with the IQR over the rounds, as the
    PyTorch latencies of ``lightning_legr.report``. To compare with the PyTorch model fairly, time both
    side by side: ``report.measure_latencies({"torch": model, "onnx": OnnxRunner(path)}, x)``.
    """
    runner = OnnxRunner(path, threads)
    timer = BenchmarkTimer(threads, rounds, min_run_time, warmup)
    example = map_tensors(example_inputs, lambda t: t.detach().cpu())
    return {b: timer(runner, batch_of(example, b)) for b in batch_sizes}


# ---------------------------------------------------------------------------- helpers
def _tensors(value: Any) -> List[torch.Tensor]:
    """The tensors of an input or output, in the order torch.export flattens them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _check_inputs(example: ExampleInputs, size: int, seed: int) -> ExampleInputs:
    """The check batch: the example first, then the example plus noise of its own spread (floating-point
    tensors; other tensors, such as token ids, repeated)."""
    generator = torch.Generator().manual_seed(seed)

    def vary(t: torch.Tensor) -> torch.Tensor:
        grown = batch_of(t, size)
        if t.dim() == 0 or not t.is_floating_point() or size == 1:
            return grown
        spread = float(t.float().std()) if t.numel() > 1 else 0.0
        noise = torch.randn(grown.shape, generator=generator).to(grown.dtype) * (spread if spread > 0 else 1.0)
        noise[:1] = 0
        return grown + noise

    return map_tensors(example, vary)


def _as_call(inputs: ExampleInputs):
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _dynamic_shapes(args: tuple, kwargs: dict, batch: Any):
    spec = lambda t: {0: batch} if isinstance(t, torch.Tensor) and t.dim() > 0 else None  # noqa: E731
    if kwargs:
        return {k: map_tensors(v, spec) if not isinstance(v, torch.Tensor) else spec(v) for k, v in kwargs.items()}
    return tuple(spec(a) if isinstance(a, torch.Tensor) else map_tensors(a, spec) for a in args)


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress lines and warnings (e.g. "torchvision is not installed") are not ours to show."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _Trail:
    """Which module's forward was running when an export failed: forward hooks push and pop module names;
    a forward that raises is never popped, so the innermost one left is where it failed."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.running, self.handles = model, [], []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self._enter(n)))
            self.handles.append(module.register_forward_hook(lambda m, a, o: self._leave()))

    def _enter(self, name: str) -> None:
        self.running.append(name)

    def _leave(self) -> None:  # returns None: a forward hook's result would replace the module's output
        self.running.pop()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def failed(self) -> Optional[str]:
        return self.running[-1] if self.running else None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _export(network: nn.Module, batch: ExampleInputs, opset: Optional[int]):
    """The exported ONNX program, or an :class:`ExportError` that names the module that failed."""
    args, kwargs = _as_call(batch)
    dynamic = _dynamic_shapes(args, kwargs, torch.export.Dim("batch", min=1))
    trail = _Trail(network)
    try:
        with _quiet(), torch.no_grad():
            exported = torch.export.export(network, args, kwargs, dynamic_shapes=dynamic, strict=False)
    except Exception as err:  # noqa: BLE001 - whatever torch.export raises, the user needs the module and a way out
        raise ExportError(_trace_failure(network, trail.failed(), err)) from None
    finally:
        trail.remove()
    try:
        with _quiet():
            return torch.onnx.export(exported, dynamo=True, opset_version=opset, verbose=False, optimize=True)
    except Exception as err:  # noqa: BLE001
        raise ExportError(
            f"The ONNX translation of {type(network).__name__} failed ({_first_line(err)}): an operator of the"
            " model has no ONNX equivalent in this opset. Try another `opset`, or write the operator with"
            " standard torch operations."
        ) from None


def _trace_failure(network: nn.Module, name: Optional[str], err: BaseException) -> str:
    if name is None:
        where = f"{type(network).__name__} could not be exported to ONNX"
        hint = (
            "If it fixes the batch size (e.g. x.view(1, -1)), write x.flatten(1) or x.view(x.size(0), -1): the exported"
            " model takes any batch size."
        )
    else:
        module = network.get_submodule(name)
        label = f"module {name!r} ({type(module).__name__})" if name else f"the forward of {type(module).__name__}"
        where = f"ONNX export failed in {label}"
        hint = (
            f"Make its forward traceable by torch.export: no Python `if` on a tensor's value, no .item(), .tolist() or"
            " .numpy(), no shapes that depend on the data (https://pytorch.org/docs/stable/export.html)."
        )
        if _STATE_ATTR in module.__dict__:
            hint += (
                " It replays a pruned F.pad / torch.cat channel shortcut: write that shortcut as"
                " lightning_legr.ZeroPadShortcut, a module that exports."
            )
    return f"{where}: {_first_line(err)}. {hint}"


def _compare(network: nn.Module, example: ExampleInputs, batch: ExampleInputs, path: str, atol: float):
    """(max abs difference, opset) of the ONNX file against the network, on the check batch and the example."""
    import onnx

    try:
        runner = OnnxRunner(path)
    except Exception as err:  # noqa: BLE001 - a file onnxruntime cannot load is a bad file, whatever the reason
        raise ExportError(f"onnxruntime cannot load {path}: {_first_line(err)}") from None
    diff = 0.0
    for inputs in (batch, example):
        with torch.no_grad():
            expected = [t.detach().float().numpy() for t in _tensors(run_model(network, inputs))]
        got = runner(*_as_call(inputs)[0], **_as_call(inputs)[1])
        shapes = [tuple(e.shape) for e in expected], [tuple(g.shape) for g in got]
        if shapes[0] != shapes[1]:
            raise ExportError(
                f"The ONNX model {path} gives outputs of shapes {shapes[1]}, PyTorch {shapes[0]}: it is not this model's."
            )
        for e, g in zip(expected, got):
            diff = max(diff, float(np.max(np.abs(e - g.astype(np.float32)))) if e.size else 0.0)
    if not diff <= atol:  # NaN fails too
        raise ExportError(
            f"The ONNX model of {type(network).__name__} differs from PyTorch by up to {diff:.3g} on a batch of"
            f" {_batch_size(batch)} (more than {atol:g}): onnxruntime computes something else. Check for"
            " operators whose ONNX translation differs (e.g. in-place updates, custom autograd functions)."
        )
    opset = next((o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), 0)
    return diff, int(opset)


def _batch_size(inputs: ExampleInputs) -> int:
    tensors = [t for t in _tensors(inputs) if t.dim() > 0]
    return int(tensors[0].shape[0]) if tensors else 1
