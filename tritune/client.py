"""A small Triton client used by the tests, the load tests and the orchestrator.

numpy in, numpy out, over HTTP or gRPC (tritonclient), with a timeout and typed errors. Admin calls (load,
unload, switching the variant behind the public model name) need the key that ``tritune serve`` configured.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from tritune.errors import (
    AdminError,
    InferenceError,
    ModelInputError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from tritune.model_config import ModelConfig, VersionPolicy
from tritune.server import ADMIN_HEADER, GRPC_ADMIN_HEADER
from tritune.signature import Signature, datatype_of

PROTOCOLS = ("http", "grpc")


def _classify(exc: InferenceServerException, model: str, url: str) -> Exception:
    message = (exc.message() or str(exc) or "unknown error").strip().splitlines()[0]
    message = message.replace("[request id: <id_unknown>] ", "").split(" NOTE: ")[0]
    status = str(exc.status() or "")
    low = message.lower()
    if "timeout" in low or "timed out" in low or "deadline" in low.replace("_", " "):
        return RequestTimeoutError(f"{model}: request timed out at {url} ({message}); raise the timeout or lower load")
    unreachable = ("failed to connect", "connection refused", "connect error", "connection reset", "socket closed")
    if any(s in low for s in unreachable) or ("unavailable" in status.lower() and "restricted" not in low):
        return ServerUnavailableError(f"Triton at {url} is unreachable ({message}); is `tritune serve` running?")
    if "unknown model" in low or "not found" in low or "is not ready" in low or "not loaded" in low:
        return ModelNotFoundError(
            f"{model}: {message}; check the model name (`cnn`, `cnn_<variant>`) and that it is loaded"
        )
    return InferenceError(f"{model}: {message}")


class InferenceClient:
    """``InferenceClient("127.0.0.1:8000")`` (HTTP) or ``InferenceClient("127.0.0.1:8001", "grpc")``.

    An HTTP client (gevent underneath) must be used only by the thread that created it; a gRPC client may be
    shared between threads.
    """

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        timeout_s: float = 30.0,
        admin_key: str | None = None,
        concurrency: int = 1,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self._admin_key = admin_key
        self._signatures: dict[str, Signature] = {}
        if protocol == "http":
            import tritonclient.http as mod

            self._client = mod.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s, concurrency=concurrency
            )
        else:
            import tritonclient.grpc as mod

            self._client = mod.InferenceServerClient(url)
        self._mod = mod

    # -- inference -----------------------------------------------------------------------------------------------
    def signature(self, model: str) -> Signature:
        """The model's inputs and outputs as Triton serves them (its config), read once per model and kept."""
        if model not in self._signatures:
            self._signatures[model] = Signature.from_config(self.model_config(model))
        return self._signatures[model]

    def infer(
        self, model: str, inputs: np.ndarray, input_name: str | None = None, output_name: str | None = None
    ) -> np.ndarray:
        """One output (``output_name``, else the model's first) for the array ``inputs`` sent as the model's one
        input (``input_name``, else the model's only input, read from Triton)."""
        if input_name is None or output_name is None:
            sig = self.signature(model)
            if input_name is None:
                if len(sig.inputs) != 1:
                    raise InferenceError(f"{model} takes inputs {sig.input_names}; call infer_all with one array each")
                input_name = sig.inputs[0].name
            output_name = output_name or sig.outputs[0].name
        return self.infer_all(model, {input_name: inputs}, outputs=[output_name])[output_name]

    def infer_all(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The outputs (``outputs``, else every output of the model) for one array per input name."""
        tensors = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            try:
                datatype = datatype_of(array.dtype)
            except ModelInputError as exc:
                raise InferenceError(f"{model}: cannot send {name!r}: {exc}") from None
            tensor = self._mod.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        names = outputs or [t.name for t in self.signature(model).outputs]
        requested = [self._mod.InferRequestedOutput(n) for n in names]
        try:
            if self.protocol == "http":
                result = self._client.infer(model, tensors, outputs=requested, timeout=int(self.timeout_s * 1e6))
            else:
                result = self._client.infer(model, tensors, outputs=requested, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _classify(exc, model, self.url) from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None
        return {n: result.as_numpy(n) for n in names}

    def _unreachable(self, exc: BaseException) -> ServerUnavailableError:
        return ServerUnavailableError(f"Triton at {self.url} is unreachable ({exc}); is `tritune serve` running?")

    # -- health and config ---------------------------------------------------------------------------------------
    def is_ready(self, model: str | None = None) -> bool:
        try:
            kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            return bool(self._client.is_model_ready(model, **kw) if model else self._client.is_server_ready(**kw))
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def is_live(self) -> bool:
        """Whether Triton answers at all (a model that is loading leaves it live; a dead server does not)."""
        try:
            kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            return bool(self._client.is_server_live(**kw))
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def model_config(self, model: str) -> ModelConfig:
        try:
            if self.protocol == "http":
                return ModelConfig.from_dict(self._client.get_model_config(model))
            return ModelConfig.from_dict(
                self._client.get_model_config(model, as_json=True, client_timeout=self.timeout_s)
            )
        except InferenceServerException as exc:
            raise _classify(exc, model, self.url) from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None

    def ready_versions(self, model: str) -> tuple[int, ...]:
        """The model's READY versions, from its metadata: the versions requests can reach, updated at once when a
        version starts to unload."""
        try:
            if self.protocol == "http":
                meta = self._client.get_model_metadata(model)
            else:
                meta = self._client.get_model_metadata(model, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _classify(exc, model, self.url) from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None
        return tuple(sorted(int(v) for v in meta.get("versions", []) if str(v).isdigit()))

    def model_stats(self, model: str) -> dict[str, Any]:
        kwargs = {} if self.protocol == "http" else {"as_json": True}
        try:
            return self._client.get_inference_statistics(model, **kwargs)
        except InferenceServerException as exc:
            raise _classify(exc, model, self.url) from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None

    # -- admin (model-repository API, restricted by key) -----------------------------------------------------------
    def _admin_headers(self) -> dict[str, str]:
        if not self._admin_key:
            return {}
        return {ADMIN_HEADER if self.protocol == "http" else GRPC_ADMIN_HEADER: self._admin_key}

    def _admin_error(self, action: str, model: str, exc: InferenceServerException) -> AdminError:
        message = (exc.message() or str(exc)).strip().splitlines()[0]
        if "restricted" in message.lower():
            return AdminError(f"{action} of {model} refused: {message}; pass the admin key (TRITUNE_ADMIN_KEY)")
        if action == "load":
            return AdminError(f"load of {model} failed, the previous copy keeps serving: {message}")
        return AdminError(f"{action} of {model} failed: {message}")

    def load(self, model: str, config: ModelConfig | None = None, files: dict[str, bytes] | None = None) -> None:
        """Load or reload ``model``; with ``config`` (and ``files``) the served copy changes without touching disk.
        Triton keeps serving the old copy until the new one is ready, and keeps it if the load fails."""
        try:
            # gRPC calls block with no deadline unless given one: a hung load must not hang the orchestrator.
            kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            self._client.load_model(
                model,
                headers=self._admin_headers(),
                config=config.to_json() if config is not None else None,
                files=files,
                **kw,
            )
        except InferenceServerException as exc:
            raise self._admin_error("load", model, exc) from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None

    def unload(self, model: str) -> None:
        try:
            self._client.unload_model(
                model,
                headers=self._admin_headers(),
                **({"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}),
            )
        except InferenceServerException as exc:
            raise self._admin_error("unload", model, exc) from None
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None

    def switch_variant(self, public_model: str, variant: str) -> ModelConfig:
        """Serve ``variant`` (e.g. ``int8``) under ``public_model``: a config-only reload that changes the version
        policy to that variant's version and keeps batching and instance settings. Triton routes requests to the
        new version once it is READY and unloads the old one after its requests finish: none are lost."""
        current = self.model_config(public_model)
        new = with_variant(current, variant)
        self.load(public_model, config=new)
        return new

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection is not an error
            self._client.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def variant_versions(config: ModelConfig) -> dict[str, int]:
    """The public model's variant → version map, written by the builders."""
    raw = config.parameters.get("variant_versions")
    if not raw:
        raise AdminError(f"{config.name} has no variant_versions parameter; rebuild it with `tritune build`")
    return {k: int(v) for k, v in json.loads(raw).items()}


# Informational parameters of one variant's own config. The public model holds several variants as versions, and
# which one serves is its version policy's highest version; a parameter naming the variant would go stale at the
# first switch that only unloads a version, and changing it would turn that switch into a reload of every version.
VARIANT_PARAMETERS = ("variant", "precision")


def _loaded(config: ModelConfig, ready: tuple[int, ...] | None) -> tuple[int, ...]:
    if ready is not None:
        return tuple(sorted(ready))
    return tuple(sorted(config.version_policy.specific)) if config.version_policy is not None else ()


def served_variant(config: ModelConfig, ready: tuple[int, ...] | None = None) -> str:
    """The variant that serves requests sent without a version. Triton routes those to the highest-numbered READY
    version, so on a public model it is the highest of ``ready`` (:meth:`InferenceClient.ready_versions`), or of
    the config's ``version_policy`` for a config read from disk; on any other model, its ``variant`` parameter
    (empty when it has none). The policy in a config Triton returns is not enough: a version that stays loaded
    keeps the config it was loaded with (docs/known_issues.md, "Several versions loaded at once")."""
    try:
        versions = variant_versions(config)
    except AdminError:
        return config.parameters.get("variant", "")
    loaded = _loaded(config, ready)
    if not loaded:
        return config.parameters.get("variant", "")
    top = max(loaded)
    by_number = {n: v for v, n in versions.items()}
    if top not in by_number:
        raise AdminError(f"{config.name} serves version {top}, which variant_versions does not list; rebuild it")
    return by_number[top]


def loaded_variants(config: ModelConfig, ready: tuple[int, ...] | None = None) -> tuple[str, ...]:
    """The public model's loaded variants (``ready``, else its version policy's), lowest version first: the served
    one is last."""
    try:
        versions = variant_versions(config)
    except AdminError:
        return (served_variant(config, ready),)
    by_number = {n: v for v, n in versions.items()}
    return tuple(by_number[n] for n in _loaded(config, ready) if n in by_number)


def with_variant(config: ModelConfig, variant: str, standby: tuple[str, ...] = ()) -> ModelConfig:
    """``config`` serving ``variant``, with the ``standby`` variants loaded beside it where their versions are
    lower (a request without a version goes to the highest loaded version, so a higher one would take the traffic).
    Everything else is kept, so that Triton can apply a change of the loaded versions alone without reloading the
    versions that stay."""
    versions = variant_versions(config)
    for name in (variant, *standby):
        if name not in versions:
            raise AdminError(f"variant {name!r} is not in {config.name} (has {', '.join(versions)}); build it first")
    loaded = {versions[variant], *(versions[s] for s in standby if versions[s] < versions[variant])}
    params = {k: v for k, v in config.parameters.items() if k not in VARIANT_PARAMETERS}
    return replace(config, version_policy=VersionPolicy(specific=tuple(sorted(loaded))), parameters=params)
