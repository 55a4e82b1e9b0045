"""The serving config: the knobs tritune turns on the public model, owned here so that the sweep, the benchmarks
and the orchestrator share one type without importing the policy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServingConfig:
    """Variant, instances, threads and dynamic batching of the public model."""

    variant: str
    instances: int = 1
    threads: int = 0  # ORT intra-op threads per instance; 0 = auto (cores ÷ instances)
    dynamic_batching: bool = False
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()

    def describe(self) -> dict:
        return {
            "variant": self.variant,
            "instances": self.instances,
            "threads": self.threads,
            "dynamic_batching": self.dynamic_batching,
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ServingConfig:
        """The inverse of :meth:`describe` (a decision log's or a sweep's JSON)."""
        return cls(
            variant=d["variant"],
            instances=int(d.get("instances", 1)),
            threads=int(d.get("threads", 0)),
            dynamic_batching=bool(d.get("dynamic_batching", False)),
            max_queue_delay_us=int(d.get("max_queue_delay_us", 0)),
            preferred_batch_sizes=tuple(int(b) for b in d.get("preferred_batch_sizes", ())),
        )
