"""Act: turn a :class:`ServingConfig` into Triton's model config and load it through the model-repository API."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from tritune.client import InferenceClient, with_variant
from tritune.errors import AdminError, ModelNotFoundError, TrituneError
from tritune.model_config import DynamicBatching, ModelConfig, QueuePolicy
from tritune.serving import ServingConfig


def serving_config(config: ModelConfig) -> ServingConfig:
    """Read the knobs back from a live model config."""
    threads = config.parameters.get("intra_op_num_threads", "auto")
    db = config.dynamic_batching
    sizes = db.preferred_batch_size if db else ()
    if sizes == (config.max_batch_size,):
        # Triton fills in [max_batch_size] when a config sets none (the same batching): read back what was asked for,
        # or the live config never equals the target and reads as changed behind the orchestrator's back.
        sizes = ()
    return ServingConfig(
        variant=config.parameters.get("variant", ""),
        instances=config.instance_count,
        threads=int(threads) if threads.isdigit() else 0,
        dynamic_batching=db is not None,
        max_queue_delay_us=db.max_queue_delay_us if db else 0,
        preferred_batch_sizes=sizes,
    )


def model_config(base: ModelConfig, target: ServingConfig, max_queue_size: int = 0) -> ModelConfig:
    """``base`` (what Triton serves now) with the target's knobs; everything else is kept."""
    cfg = base if target.variant == base.parameters.get("variant", "") else with_variant(base, target.variant)
    cfg = cfg.with_instances(target.instances).with_parameters(
        intra_op_num_threads=str(target.threads) if target.threads else "auto"
    )
    batching = None
    if target.dynamic_batching:
        queue = QueuePolicy(max_queue_size=max_queue_size) if max_queue_size else None
        if queue is None and base.dynamic_batching is not None:
            queue = base.dynamic_batching.default_queue_policy  # an operator's queue policy survives retuning
        batching = DynamicBatching(
            preferred_batch_size=target.preferred_batch_sizes,
            max_queue_delay_us=target.max_queue_delay_us,
            default_queue_policy=queue,
        )
    return replace(cfg, dynamic_batching=batching)


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    seconds: float
    error: str | None = None
    config: ModelConfig | None = None


class Applier:
    """Applies one config at a time: get_model_config → change → load_model(config=…) → wait READY."""

    def __init__(self, client: InferenceClient, model: str, ready_timeout_s: float = 60.0):
        self.client, self.model, self.ready_timeout_s = client, model, ready_timeout_s
        self._last: ModelConfig | None = None  # what Triton last served: the base when the model is gone

    def current(self) -> tuple[ModelConfig, ServingConfig]:
        cfg = self.client.model_config(self.model)
        self._last = cfg
        return cfg, serving_config(cfg)

    def apply(self, target: ServingConfig) -> ApplyResult:
        start = time.monotonic()
        try:
            try:
                base = self.client.model_config(self.model)
            except ModelNotFoundError:
                if self._last is None:
                    raise
                base = self._last  # not loaded (e.g. Triton restarted without it): load it from what it was
            new = model_config(base, target)
            self.client.load(self.model, config=new)  # returns when the new copy is loaded (or failed)
            deadline = time.monotonic() + self.ready_timeout_s
            while not self.client.is_ready(self.model):
                if time.monotonic() > deadline:
                    raise AdminError(f"{self.model} not READY {self.ready_timeout_s:.0f} s after the load")
                time.sleep(0.05)
            live = serving_config(self.client.model_config(self.model))
            if (live.instances, live.variant, live.dynamic_batching) != (
                target.instances,
                target.variant,
                target.dynamic_batching,
            ):
                raise AdminError(f"{self.model} reports {live.describe()} after loading {target.describe()}")
            self._last = new
            return ApplyResult(True, time.monotonic() - start, config=new)
        except TrituneError as exc:
            return ApplyResult(False, time.monotonic() - start, error=str(exc))
