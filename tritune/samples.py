"""The user's data for a model: samples (one array per model input, samples on axis 0) and optional labels.

Three formats, each checked against the model's :class:`~tritune.signature.Signature` before any work starts:

* ``.npz``: one array per input name, plus an optional ``labels`` array of integer classes;
* a folder of images in the ImageFolder layout (``<root>/<class>/<image>``; classes sorted by name, as torchvision
  numbers them), for a model with one image input of ``[C, H, W]``: pixels scaled to [0, 1], resized to H×W;
* perf_analyzer's ``--input-data`` JSON: ``{"data": [{"<input>": [...] | {"content": [...], "shape": [...]} |
  {"b64": "..."}}, ...]}``, one entry per sample; an optional top-level ``"labels"`` list is tritune's addition.

A mismatch (a missing input, a wrong datatype or shape, labels of the wrong length) is one :class:`DataError` line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritune.errors import DataError
from tritune.signature import Signature

LABELS = "labels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


@dataclass
class Samples:
    inputs: dict[str, np.ndarray]  # input name → samples on axis 0
    labels: np.ndarray | None
    source: str  # what a run used, in words
    classes: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.inputs[name]).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    def take(self, idx: np.ndarray | slice) -> Samples:
        labels = None if self.labels is None else self.labels[idx]
        return Samples({k: v[idx] for k, v in self.inputs.items()}, labels, self.source, self.classes, self.notes)

    def head(self, n: int) -> Samples:
        """The first ``n`` samples (all of them for n <= 0)."""
        return self if n <= 0 or n >= len(self) else self.take(slice(0, n))

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}

    def describe(self) -> dict:
        return {
            "source": self.source,
            "samples": len(self),
            "labels": self.labels is not None,
            "classes": list(self.classes),
            "fingerprint": self.fingerprint,
            "notes": list(self.notes),
        }


def synthesize(signature: Signature, n: int, seed: int = 0) -> Samples:
    """``n`` random samples of the right datatypes and shapes, for a model that came without data."""
    rng = np.random.default_rng(seed)
    if signature.batched:
        arrays = signature.random_inputs(n, rng)
    else:
        draws = [signature.random_inputs(1, rng) for _ in range(n)]
        arrays = {k: np.stack([d[k] for d in draws]) for k in signature.input_names}
    return Samples(
        arrays,
        None,
        f"{n} synthesized random samples (no data given)",
        notes=["random inputs: accuracy is agreement with fp32 on noise, not accuracy on real data"],
    )


def load_samples(path: Path | str, signature: Signature, what: str = "--eval-data") -> Samples:
    """The samples in ``path`` (npz, ImageFolder folder or perf_analyzer JSON), checked against ``signature``."""
    path = Path(path)
    label = f"{what} {path}"
    if not path.exists():
        raise DataError(f"{label} does not exist; pass an .npz, a folder of class folders, or a perf_analyzer JSON")
    if path.is_dir():
        arrays, labels, classes = _image_folder(path, signature, label)
        kind = "ImageFolder"
    elif path.suffix == ".npz":
        arrays, labels, classes = _npz(path, label), None, ()
        labels = arrays.pop(LABELS, None)
        kind = "npz"
    elif path.suffix == ".json":
        arrays, labels, classes = _perf_analyzer_json(path, signature, label), None, ()
        labels = arrays.pop(LABELS, None)
        kind = "perf_analyzer JSON"
    else:
        raise DataError(
            f"{label}: unknown format {path.suffix or '(no suffix)'}; pass an .npz, a folder of class folders, "
            "or a perf_analyzer --input-data .json"
        )
    extra = sorted(set(arrays) - set(signature.input_names))
    if extra:
        raise DataError(
            f"{label} has array(s) {extra} that are not model inputs; the model's inputs are "
            f"{signature.input_names} (and '{LABELS}' for labels)"
        )
    inputs = signature.check_inputs(arrays, label)
    n = len(next(iter(inputs.values())))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(
                f"{label}: '{LABELS}' has shape {list(labels.shape)}, expected [{n}] (one class per sample)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{label}: '{LABELS}' holds {labels.dtype}; labels are integer class indices")
        labels = labels.astype(np.int64)
    return Samples(inputs, labels, f"{kind} {path} ({n} samples)", classes)


def _npz(path: Path, label: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{label} is not a readable .npz ({exc}); write it with numpy.savez") from exc


def _perf_analyzer_json(path: Path, signature: Signature, label: str) -> dict[str, np.ndarray]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{label} is not readable JSON ({exc})") from exc
    entries = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f'{label} has no "data" list; perf_analyzer\'s format is {{"data": [{{"<input>": [...]}}]}}')
    columns: dict[str, list[np.ndarray]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{label}: data[{i}] is not an object of input name → values")
        for name, value in entry.items():
            try:
                tensor = signature.input(name)
            except Exception:
                raise DataError(
                    f"{label}: data[{i}] names {name!r}, not a model input; the inputs are {signature.input_names}"
                ) from None
            columns.setdefault(name, []).append(_pa_tensor(value, tensor, f"{label}: data[{i}][{name!r}]"))
    arrays: dict[str, np.ndarray] = {}
    for name, items in columns.items():
        if len(items) != len(entries):
            raise DataError(f"{label}: {name!r} is given in {len(items)} of {len(entries)} entries; give it in each")
        if len({a.shape for a in items}) != 1:
            raise DataError(f"{label}: {name!r} has different shapes across entries; pad them to one shape")
        arrays[name] = np.stack(items)
    if isinstance(doc.get(LABELS), list):
        arrays[LABELS] = np.asarray(doc[LABELS])
    return arrays


def _pa_tensor(value, tensor, where: str) -> np.ndarray:
    shape = None
    if isinstance(value, dict):
        shape = value.get("shape")
        if "b64" in value:
            try:
                flat = np.frombuffer(base64.b64decode(value["b64"]), dtype=tensor.dtype)
            except (ValueError, TypeError) as exc:
                raise DataError(f"{where}: b64 content does not decode to {tensor.datatype} ({exc})") from exc
        else:
            flat = _array(value.get("content", []), where)
    else:
        flat = _array(value, where)
    if shape is None:
        if tensor.dynamic:
            if flat.ndim == len(tensor.shape):  # nested (or, for one dimension, flat) lists carry their own shape
                return flat
            raise DataError(
                f'{where}: the input has dynamic dims {tensor.describe()}; give {{"content": [...], "shape": [...]}}'
            )
        shape = tensor.shape
    flat = flat.reshape(-1)
    if int(np.prod(shape)) != flat.size:
        raise DataError(f"{where}: {flat.size} values do not fill shape {list(shape)} ({tensor.describe()})")
    return flat.reshape(shape)


def _array(value, where: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise DataError(f"{where} is not rectangular ({exc}); pad every row to one length") from None


def _image_folder(root: Path, signature: Signature, label: str) -> tuple[dict[str, np.ndarray], np.ndarray, tuple]:
    if len(signature.inputs) != 1 or len(signature.inputs[0].shape) != 3:
        raise DataError(
            f"{label} is a folder of images, but the model's inputs are "
            f"{', '.join(f'{t.name} {t.describe()}' for t in signature.inputs)}; an image folder fits a model with "
            "one [C, H, W] input; give an .npz instead"
        )
    tensor = signature.inputs[0]
    channels, height, width = tensor.shape
    if channels not in (1, 3) or height < 0 or width < 0:
        raise DataError(
            f"{label}: the model's input {tensor.describe()} is not a fixed [1|3, H, W] image; give an .npz instead"
        )
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{label} has no class folders; lay it out as {root}/<class>/<image>")
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for index, cls in enumerate(classes):
        for file in sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                    pixels = np.asarray(img, dtype=np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"{label}: {file} is not a readable image ({exc}); remove it") from exc
            images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
            labels.append(index)
    if not images:
        raise DataError(f"{label} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")
    x = np.stack(images)
    if tensor.is_float:
        x = x.astype(tensor.dtype)
    elif tensor.datatype == "UINT8":
        x = np.round(x * 255).astype(np.uint8)
    else:
        raise DataError(f"{label}: images cannot feed a {tensor.datatype} input; give an .npz instead")
    return {tensor.name: x}, np.asarray(labels, dtype=np.int64), classes
