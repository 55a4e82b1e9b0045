"""Bring your own PyTorch module: ``tritune build --torch package.module:factory [--weights FILE]``.

The module is built by the factory (no arguments), loaded with the user's weights, exported to ONNX with the
dynamo exporter (a dynamic batch dimension on every input), and then goes the ONNX path (fp16, int8, evaluation,
repository). A module also gives the variants only PyTorch can make:

* ``pruned``: structured pruning through torch-pruning's dependency graph (any architecture it can trace), the
  output layer kept whole; fine-tuned on ``--train-data`` when it has labels, otherwise left as pruned (said so);
* ``distilled``: a student the user names (``--student package.module:factory``), trained by knowledge
  distillation from the fp32 teacher on ``--train-data`` (labels optional: without them the teacher's are used).

Inputs are the forward's parameters in order, their shapes from ``--input-shape`` or from an ``.npz`` given as data.
Outputs keep the module's names where it returns a dict (``logits`` of a Hugging Face model), else ``output`` /
``output_<i>``.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from builders import onnx_utils as ox
from builders.onnx_import import (
    ONNX_VARIANTS,
    Imported,
    build_imported,
    check_target,
    evaluation_data,
    requested_variants,
)
from builders.prune import structured_prune
from builders.train import TrainConfig, distill, train
from tritune.errors import BuildError, CheckpointError, ConfigError, DataError
from tritune.manifest import Manifest
from tritune.samples import Samples, load_samples
from tritune.signature import Signature, Tensor, datatype_of

TORCH_VARIANTS = ("fp32", "pruned", "distilled", "fp16", "int8")
EXPORT_TOLERANCE_ABS = 1e-3  # ONNX Runtime vs PyTorch, relative to the largest output magnitude


def load_module(spec: str, weights: Path | None = None, flag: str = "--torch") -> nn.Module:
    """``package.module:factory`` called with no arguments, with ``weights`` (a state_dict) loaded if given."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{flag} {spec!r} is not package.module:factory; e.g. torchvision.models:resnet18")
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:  # a module of the user's own, beside where they run the command
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything on import
        raise BuildError(
            f"{flag} {spec}: cannot import {module_name} ({type(exc).__name__}: {exc}); check the module path and "
            "that its package is installed in this environment"
        ) from exc
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BuildError(f"{flag} {spec}: {module_name} has no callable {attr!r}; name a function or class in it")
    try:
        model = factory()
    except Exception as exc:
        raise BuildError(
            f"{flag} {spec}: calling {attr}() failed ({type(exc).__name__}: {exc}); the factory must build the "
            "model without arguments (wrap it in a function of your own)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise BuildError(f"{flag} {spec}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, Path(weights), spec)
    return model.eval()


def _load_weights(model: nn.Module, path: Path, spec: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"--weights {path} does not exist; pass the file of the module's state_dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"--weights {path} is not a PyTorch state_dict file ({type(exc).__name__}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"--weights {path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"--weights {path} do not fit {spec} ({first}); pass the weights of this model") from exc


class _Adapter(nn.Module):
    """Positional tensors in, a tuple of tensors out: the form the exporter, torch-pruning and training take."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names
        self.output_names: list[str] = []

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.input_names, xs, strict=True)))
        if isinstance(out, torch.Tensor):
            names, values = ["output"], [out]
        elif isinstance(out, dict):  # a Hugging Face ModelOutput is a dict of its non-None fields
            names = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
            values = [out[k] for k in names]
        elif isinstance(out, tuple | list):
            values = [v for v in out if isinstance(v, torch.Tensor)]
            names = [f"output_{i}" for i in range(len(values))]
        else:
            raise BuildError(f"the module returned a {type(out).__name__}; return a tensor, a tuple or a dict of them")
        if not self.output_names:
            self.output_names = names
        return tuple(values)


class _Scores(nn.Module):
    """One input, one output (the classifier's): what training and distillation call."""

    def __init__(self, adapter: _Adapter, index: int):
        super().__init__()
        self.adapter, self.index = adapter, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(x)[self.index]


def forward_inputs(model: nn.Module) -> list[str]:
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def parse_input_shapes(spec: str, names: list[str]) -> dict[str, tuple[int, ...]]:
    """``3,224,224`` (the first input) or ``name:3,224,224;other:16``: per-sample shapes of FP32 inputs."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, item in enumerate(p.strip() for p in spec.split(";") if p.strip()):
        name, _, dims = item.rpartition(":")
        name = name or (names[i] if i < len(names) else "")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            shape = ()
        if not name or not shape or any(d < 1 for d in shape):
            raise ConfigError(f"--input-shape {spec!r}: {item!r} is not [name:]d,d,…; e.g. 3,224,224")
        shapes[name] = shape
    return shapes


def input_tensors(opts, model: nn.Module) -> tuple[Tensor, ...]:
    """The module's inputs: the forward's parameters named by ``--input-shape`` or by an ``.npz`` of data."""
    params = forward_inputs(model)
    if opts.input_shape:
        shapes = parse_input_shapes(opts.input_shape, params)
        tensors = tuple(Tensor(n, "FP32", s) for n, s in shapes.items())
    else:
        data = next((Path(p) for p in (opts.eval_data, opts.train_data) if p and Path(p).suffix == ".npz"), None)
        if data is None:
            raise ConfigError(
                "--torch needs the input shapes: pass --input-shape (e.g. 3,224,224) or an .npz as --eval-data"
            )
        from tritune.samples import LABELS, _npz

        arrays = {k: v for k, v in _npz(data, f"--eval-data {data}").items() if k != LABELS}
        # A module's float inputs are float32 (float64 data, e.g. pixels / 255.0, is converted when it is loaded).
        tensors = tuple(
            Tensor(n, "FP32" if a.dtype == np.float64 else datatype_of(a.dtype), tuple(a.shape[1:]))
            for n, a in arrays.items()
        )
    unknown = [t.name for t in tensors if t.name not in params]
    if unknown:
        raise DataError(f"input(s) {unknown} are not parameters of the module's forward {params}; name them so")
    order = {n: i for i, n in enumerate(params)}
    tensors = tuple(sorted(tensors, key=lambda t: order[t.name]))
    skipped = params[: len(tensors)]
    if [t.name for t in tensors] != skipped:
        raise DataError(
            f"inputs {[t.name for t in tensors]} skip a forward parameter before them ({params}); give each of "
            f"{skipped}"
        )
    return tensors


def build_from_torch(opts, log: Callable[[str], None] = print) -> Manifest:
    possible = tuple(v for v in TORCH_VARIANTS if v != "distilled" or opts.student)
    variants = requested_variants(opts, possible, "this module" + ("" if opts.student else " without --student"))
    check_target(opts, "--torch")
    torch.manual_seed(opts.seed)
    model = load_module(opts.torch, opts.weights)
    tensors = input_tensors(opts, model)
    adapter = _Adapter(model, [t.name for t in tensors]).eval()
    rng = np.random.default_rng(opts.seed)
    example = tuple(torch.from_numpy(t.random((2,), t.shape, rng)) for t in tensors)
    try:
        with torch.no_grad():
            adapter(*example)  # an eager call names the outputs
    except BuildError:
        raise
    except Exception as exc:  # the user's forward may raise anything on inputs it does not take
        shapes = ", ".join(f"{t.name} {t.describe()}" for t in tensors)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BuildError(
            f"{opts.torch} fails on inputs {shapes} ({type(exc).__name__}: {first[:200]}); check --input-shape or "
            "the data's arrays"
        ) from exc
    name = opts.torch.partition(":")[2]
    log(f"model: {opts.torch} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters)")

    with tempfile.TemporaryDirectory(prefix="tritune-torch-") as tmp:
        art = Path(tmp)
        fp32_path = _export(adapter, example, art / "fp32.onnx", "fp32", log)
        proto = onnx.load(str(fp32_path))
        signature = Signature.from_onnx(proto)
        log(f"signature: {signature.describe()}")
        data = evaluation_data(opts, signature, log)
        _check_export(adapter, fp32_path, data, signature)
        train_data = load_samples(opts.train_data, signature, "--train-data") if opts.train_data else None
        if opts.fit_epochs:
            _fit_fp32(opts, adapter, signature, train_data, log)
            fp32_path = _export(adapter, example, art / "fp32.onnx", "fp32", log)
            proto = onnx.load(str(fp32_path))
        imported = Imported(name, f"torch:{opts.torch}", proto, signature, architecture=type(model).__name__)
        if "pruned" in variants:
            imported.extra["pruned"] = _pruned(opts, adapter, example, signature, train_data, art, imported, log)
        if "distilled" in variants:
            imported.extra["distilled"] = _distilled(opts, adapter, signature, train_data, data, art, imported, log)
        return build_imported(opts, imported, data, variants, log)


def _export(adapter: _Adapter, example: tuple[torch.Tensor, ...], path: Path, name: str, log) -> Path:
    started = time.perf_counter()
    log(f"{name}: exporting to ONNX (dynamo exporter) …")
    batch = torch.export.Dim("batch", min=1, max=ox.MAX_EXPORT_BATCH)
    ox.export_onnx(
        adapter,
        path,
        example=example,
        input_names=adapter.input_names,
        output_names=adapter.output_names,
        # One entry for the adapter's one parameter, ``*xs``: a dynamic batch on each of its tensors.
        dynamic_shapes=(tuple({0: batch} for _ in example),),
    )
    log(f"{name}: exported in {time.perf_counter() - started:.1f} s")
    return path


@torch.no_grad()
def _check_export(adapter: _Adapter, path: Path, data: Samples, signature: Signature) -> None:
    """The exported graph must compute what the module computes (on a few of the user's samples)."""
    few = data.head(4)
    xs = tuple(torch.from_numpy(few.inputs[t.name]) for t in signature.inputs)
    if not signature.batched:
        return
    expected = [t.numpy() for t in adapter(*xs)]
    got = ox.run_all(ox.session(path, threads=1), few.inputs, True)
    for t, ref in zip(signature.outputs, expected, strict=True):
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(got[t.name].astype(np.float64) - ref).max()) / scale
        if err > EXPORT_TOLERANCE_ABS:
            raise BuildError(
                f"the exported ONNX disagrees with PyTorch on {t.name!r} (relative error {err:.2g}); the exporter "
                "mistranslated an op: export the module to ONNX yourself and pass --onnx"
            )


def _fit_fp32(opts, adapter, signature, train_data: Samples | None, log) -> None:
    if train_data is None or train_data.labels is None:
        raise ConfigError("--fit-epochs trains on --train-data with labels: pass one")
    index = _classifier(signature, train_data, "fp32 training")
    x = train_data.inputs[signature.inputs[0].name]
    cfg = TrainConfig(opts.fit_epochs, opts.batch_size, opts.lr, seed=opts.seed)
    log(f"fp32: training {opts.fit_epochs} epoch(s) on {len(x)} --train-data samples")
    train(_Scores(adapter, index), x, train_data.labels, cfg, log, "fp32")
    adapter.eval()


def _classifier(signature: Signature, train: Samples | None, what: str) -> int:
    if len(signature.inputs) != 1 or signature.classifier_output is None:
        raise BuildError(
            f"{what} trains a model with one input and class scores; this one has {signature.describe()}: leave "
            f"{what.split()[0]} out of --variants"
        )
    return [t.name for t in signature.outputs].index(signature.classifier_output.name)


def _pruned(opts, adapter, example, signature, train_data, art: Path, imported: Imported, log) -> Path:
    started = time.perf_counter()
    log(f"pruned: removing {opts.prune_ratio:.0%} of the channels by L1 norm (torch-pruning dependency graph) …")
    pruned = copy.deepcopy(adapter)
    try:
        structured_prune(pruned, opts.prune_ratio, example=example)
    except BuildError:
        raise
    except Exception as exc:  # torch-pruning cannot trace every architecture
        raise BuildError(
            f"pruning failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); leave pruned "
            "out of --variants"
        ) from exc
    if train_data is not None and train_data.labels is not None:
        index = _classifier(signature, train_data, "pruned fine-tuning")
        x = train_data.inputs[signature.inputs[0].name]
        cfg = TrainConfig(opts.finetune_epochs, opts.batch_size, opts.lr / 2, seed=opts.seed)
        log(f"pruned: fine-tuning {opts.finetune_epochs} epoch(s) on {len(x)} --train-data samples")
        train(_Scores(pruned, index), x, train_data.labels, cfg, log, "finetune")
        imported.derived_from["pruned"] = f"fp32, {opts.prune_ratio:.0%} of channels pruned, fine-tuned"
    else:
        imported.derived_from["pruned"] = f"fp32, {opts.prune_ratio:.0%} of channels pruned, not fine-tuned"
        imported.notes.append("pruned was not fine-tuned: pass --train-data with labels to fine-tune it")
        log("pruned: not fine-tuned (no --train-data with labels); its accuracy shows what pruning alone costs")
    pruned.eval()
    log(f"pruned: {sum(p.numel() for p in pruned.parameters()):,} parameters ({time.perf_counter() - started:.1f} s)")
    return _export(pruned, example, art / "pruned.onnx", "pruned", log)


def _distilled(opts, adapter, signature, train_data, data, art: Path, imported: Imported, log) -> Path:
    if train_data is None:
        raise ConfigError("distilled trains the student on --train-data: pass it (labels optional)")
    index = _classifier(signature, train_data, "distilled training")
    student = load_module(opts.student, None, "--student")
    student_adapter = _Adapter(student, adapter.input_names)
    x = train_data.inputs[signature.inputs[0].name]
    with torch.no_grad():
        teacher_top1 = np.concatenate(
            [adapter(torch.from_numpy(x[i : i + 256]))[index].argmax(1).numpy() for i in range(0, len(x), 256)]
        )
    labels = train_data.labels if train_data.labels is not None else teacher_top1
    cfg = TrainConfig(opts.distill_epochs, opts.batch_size, opts.lr, seed=opts.seed)
    log(f"distilled: training {opts.student} from the fp32 teacher for {opts.distill_epochs} epoch(s) on {len(x)}")
    distill(
        _Scores(student_adapter, index),
        _Scores(adapter, index),
        x,
        labels,
        cfg,
        opts.distill_temperature,
        opts.distill_alpha if train_data.labels is not None else 1.0,
        log,
    )
    imported.derived_from["distilled"] = f"{opts.student}, distilled from fp32"
    with torch.no_grad():
        example = (torch.from_numpy(x[:2]),)
        student_adapter.eval()(*example)
    student_adapter.output_names = list(adapter.output_names)
    return _export(student_adapter.eval(), example, art / "distilled.onnx", "distilled", log)


__all__ = ["ONNX_VARIANTS", "TORCH_VARIANTS", "build_from_torch", "load_module"]
