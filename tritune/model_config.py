"""Typed Triton model configuration, mirroring the parts of ``model_config.proto`` the stack uses.

Configs are converted to the ``ModelConfig`` protobuf that tritonclient ships and written with
``text_format`` (config.pbtxt) or ``json_format`` (the ``config=`` argument of ``load_model``), never
assembled as strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from tritune.errors import ConfigError

__all__ = [
    "DynamicBatching",
    "InstanceGroup",
    "ModelConfig",
    "QueuePolicy",
    "TensorSpec",
    "VersionPolicy",
    "WarmupSample",
]


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; ``dims`` excludes the batch dimension when batching is on."""

    name: str
    data_type: str  # a DataType name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]

    def _check(self) -> None:
        if self.data_type not in pb.DataType.keys():  # noqa: SIM118 - protobuf enum wrapper, not a dict
            raise ConfigError(
                f"tensor {self.name!r}: unknown data type {self.data_type!r}; use one of TYPE_FP32, TYPE_FP16, ..."
            )


@dataclass(frozen=True)
class InstanceGroup:
    count: int = 1
    kind: str = "KIND_CPU"  # KIND_CPU, KIND_GPU, KIND_AUTO, KIND_MODEL
    gpus: tuple[int, ...] = ()

    def to_proto(self) -> pb.ModelInstanceGroup:
        if self.count < 1:
            raise ConfigError(f"instance count must be >= 1, got {self.count}")
        return pb.ModelInstanceGroup(
            count=self.count, kind=pb.ModelInstanceGroup.Kind.Value(self.kind), gpus=list(self.gpus)
        )

    @classmethod
    def from_proto(cls, msg: pb.ModelInstanceGroup) -> InstanceGroup:
        return cls(count=msg.count or 1, kind=pb.ModelInstanceGroup.Kind.Name(msg.kind), gpus=tuple(msg.gpus))


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy: ``max_queue_size`` 0 means unbounded."""

    max_queue_size: int = 0
    default_timeout_us: int = 0
    timeout_action_reject: bool = True
    allow_timeout_override: bool = False

    def to_proto(self) -> pb.ModelQueuePolicy:
        return pb.ModelQueuePolicy(
            max_queue_size=self.max_queue_size,
            default_timeout_microseconds=self.default_timeout_us,
            timeout_action=pb.ModelQueuePolicy.REJECT if self.timeout_action_reject else pb.ModelQueuePolicy.DELAY,
            allow_timeout_override=self.allow_timeout_override,
        )

    @classmethod
    def from_proto(cls, msg: pb.ModelQueuePolicy) -> QueuePolicy:
        return cls(
            max_queue_size=msg.max_queue_size,
            default_timeout_us=msg.default_timeout_microseconds,
            timeout_action_reject=msg.timeout_action == pb.ModelQueuePolicy.REJECT,
            allow_timeout_override=msg.allow_timeout_override,
        )


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    default_queue_policy: QueuePolicy | None = None

    def to_proto(self) -> pb.ModelDynamicBatching:
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        msg = pb.ModelDynamicBatching(
            preferred_batch_size=list(self.preferred_batch_size),
            max_queue_delay_microseconds=self.max_queue_delay_us,
        )
        if self.default_queue_policy is not None:
            msg.default_queue_policy.CopyFrom(self.default_queue_policy.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ModelDynamicBatching) -> DynamicBatching:
        return cls(
            preferred_batch_size=tuple(msg.preferred_batch_size),
            max_queue_delay_us=msg.max_queue_delay_microseconds,
            default_queue_policy=QueuePolicy.from_proto(msg.default_queue_policy)
            if msg.HasField("default_queue_policy")
            else None,
        )


@dataclass(frozen=True)
class VersionPolicy:
    """Exactly one of: latest ``n`` versions, all versions, or the listed ``specific`` versions."""

    latest: int | None = None
    all: bool = False
    specific: tuple[int, ...] = ()

    def to_proto(self) -> pb.ModelVersionPolicy:
        msg = pb.ModelVersionPolicy()
        if self.specific:
            msg.specific.versions.extend(self.specific)
        elif self.all:
            msg.all.SetInParent()
        else:
            msg.latest.num_versions = self.latest or 1
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ModelVersionPolicy) -> VersionPolicy:
        which = msg.WhichOneof("policy_choice")
        if which == "specific":
            return cls(specific=tuple(msg.specific.versions))
        if which == "all":
            return cls(all=True)
        return cls(latest=msg.latest.num_versions or 1)


@dataclass(frozen=True)
class WarmupSample:
    """One ``model_warmup`` entry: Triton runs it ``count`` times on every instance before the model is READY.

    A version (or instance) loaded by a reload therefore takes traffic with its sessions' first runs behind it;
    without it those runs fall on the first live requests. Inputs are zeros (``zero_data``): the cost of a run of
    a CNN does not depend on the values.
    """

    name: str
    batch_size: int
    inputs: tuple[TensorSpec, ...]
    count: int = 1

    def to_proto(self) -> pb.ModelWarmup:
        if self.batch_size < 0 or self.count < 1:
            raise ConfigError(
                f"warmup sample {self.name!r}: batch_size must be >= 0 and count >= 1, "
                f"got {self.batch_size} and {self.count}"
            )
        msg = pb.ModelWarmup(name=self.name, batch_size=self.batch_size, count=self.count)
        for spec in self.inputs:
            spec._check()
            msg.inputs[spec.name].CopyFrom(
                pb.ModelWarmup.Input(data_type=pb.DataType.Value(spec.data_type), dims=list(spec.dims), zero_data=True)
            )
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ModelWarmup) -> WarmupSample:
        inputs = tuple(
            TensorSpec(key, pb.DataType.Name(value.data_type), tuple(value.dims))
            for key, value in sorted(msg.inputs.items())
        )
        return cls(name=msg.name, batch_size=msg.batch_size, inputs=inputs, count=msg.count or 1)


@dataclass(frozen=True)
class ModelConfig:
    """The subset of Triton's ModelConfig the stack writes and tunes."""

    name: str
    backend: str = ""
    platform: str = ""
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    instance_group: tuple[InstanceGroup, ...] = ()
    dynamic_batching: DynamicBatching | None = None
    version_policy: VersionPolicy | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    cuda_graphs: bool = False
    model_warmup: tuple[WarmupSample, ...] = ()

    # -- derived views -------------------------------------------------------------------------
    @property
    def instance_count(self) -> int:
        return sum(g.count for g in self.instance_group) or 1

    @property
    def cuda_graph_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes Triton's TensorRT backend captures CUDA graphs for, with ``graphs: true`` and no
        ``graph_spec`` (tensorrt_backend ``InitializeGraphSpecs``): 1, the preferred batch sizes and max_batch_size
        under dynamic batching; 1, 2, 3, 4, 6, 8, 12, 16 and max_batch_size without it. A batch of another size (the
        dynamic batcher sends whatever is pending when the queue delay runs out) runs without a graph. Each reload
        recomputes them from the config loaded, so they follow the orchestrator's preferred sizes."""
        if not self.cuda_graphs:
            return ()
        if self.max_batch_size == 0:
            return (0,)
        if self.dynamic_batching is not None:
            sizes = {1, *self.dynamic_batching.preferred_batch_size}
        else:
            sizes = {1, 2, 3, 4, 6, 8, 12, 16}
        return tuple(sorted(b for b in sizes | {self.max_batch_size} if b <= self.max_batch_size))

    def with_instances(self, count: int, kind: str | None = None) -> ModelConfig:
        kind = kind or (self.instance_group[0].kind if self.instance_group else "KIND_CPU")
        return replace(self, instance_group=(InstanceGroup(count=count, kind=kind),))

    def with_parameters(self, **params: str) -> ModelConfig:
        return replace(self, parameters={**self.parameters, **{k: str(v) for k, v in params.items()}})

    # -- protobuf ------------------------------------------------------------------------------
    def to_proto(self) -> pb.ModelConfig:
        if not self.name:
            raise ConfigError("model config needs a name")
        if self.max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        msg = pb.ModelConfig(
            name=self.name, backend=self.backend, platform=self.platform, max_batch_size=self.max_batch_size
        )
        for spec, target in ((s, msg.input.add()) for s in self.inputs):
            spec._check()
            target.name, target.data_type = spec.name, pb.DataType.Value(spec.data_type)
            target.dims.extend(spec.dims)
        for spec, target in ((s, msg.output.add()) for s in self.outputs):
            spec._check()
            target.name, target.data_type = spec.name, pb.DataType.Value(spec.data_type)
            target.dims.extend(spec.dims)
        msg.instance_group.extend(g.to_proto() for g in self.instance_group)
        if self.dynamic_batching is not None:
            msg.dynamic_batching.CopyFrom(self.dynamic_batching.to_proto())
        if self.version_policy is not None:
            msg.version_policy.CopyFrom(self.version_policy.to_proto())
        for key in sorted(self.parameters):
            msg.parameters[key].string_value = str(self.parameters[key])
        if self.cuda_graphs:
            msg.optimization.cuda.graphs = True
        msg.model_warmup.extend(w.to_proto() for w in self.model_warmup)
        return msg

    @classmethod
    def from_proto(cls, msg: pb.ModelConfig) -> ModelConfig:
        def specs(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t.name, pb.DataType.Name(t.data_type), tuple(t.dims)) for t in items)

        return cls(
            name=msg.name,
            backend=msg.backend,
            platform=msg.platform,
            max_batch_size=msg.max_batch_size,
            inputs=specs(msg.input),
            outputs=specs(msg.output),
            instance_group=tuple(InstanceGroup.from_proto(g) for g in msg.instance_group),
            dynamic_batching=DynamicBatching.from_proto(msg.dynamic_batching)
            if msg.HasField("dynamic_batching")
            else None,
            version_policy=VersionPolicy.from_proto(msg.version_policy) if msg.HasField("version_policy") else None,
            parameters={k: v.string_value for k, v in msg.parameters.items()},
            cuda_graphs=msg.optimization.cuda.graphs,
            model_warmup=tuple(WarmupSample.from_proto(w) for w in msg.model_warmup),
        )

    # -- text forms ----------------------------------------------------------------------------
    def to_pbtxt(self) -> str:
        return text_format.MessageToString(self.to_proto())

    @classmethod
    def from_pbtxt(cls, text: str) -> ModelConfig:
        try:
            return cls.from_proto(text_format.Parse(text, pb.ModelConfig()))
        except text_format.ParseError as exc:
            raise ConfigError(f"config.pbtxt does not parse ({exc}); fix it or rebuild the repository") from exc

    def to_json(self) -> str:
        """The JSON form Triton's ``load_model(config=...)`` accepts."""
        return json_format.MessageToJson(self.to_proto(), preserving_proto_field_name=True, indent=None)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """From the dict ``get_model_config`` returns (HTTP JSON or gRPC ``as_json``)."""
        data = data.get("config", data)
        try:
            msg = json_format.ParseDict(data, pb.ModelConfig(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise ConfigError(f"model config JSON does not parse ({exc})") from exc
        return cls.from_proto(msg)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / "config.pbtxt"
        path.write_text(self.to_pbtxt())
        return path

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        path = Path(model_dir) / "config.pbtxt"
        try:
            return cls.from_pbtxt(path.read_text())
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path}: {exc.strerror}; rebuild the repository with `tritune build`"
            ) from exc
