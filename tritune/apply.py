"""Act: turn a :class:`ServingConfig` into Triton's model config and load it through the model-repository API."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from tritune.client import InferenceClient, loaded_variants, served_variant, variant_versions, with_variant
from tritune.errors import AdminError, ModelNotFoundError, ServerUnavailableError, TrituneError
from tritune.model_config import DynamicBatching, ModelConfig, QueuePolicy, VersionPolicy
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
        variant=served_variant(config),
        instances=config.instance_count,
        threads=int(threads) if threads.isdigit() else 0,
        dynamic_batching=db is not None,
        max_queue_delay_us=db.max_queue_delay_us if db else 0,
        preferred_batch_sizes=sizes,
    )


def model_config(
    base: ModelConfig, target: ServingConfig, max_queue_size: int = 0, standby: tuple[str, ...] | None = None
) -> ModelConfig:
    """``base`` (what Triton serves now) with the target's knobs; everything else is kept. ``standby``: the
    variants to keep loaded beside the served one (None: whatever ``base`` loads below it now)."""
    if standby is None:
        standby = tuple(v for v in loaded_variants(base) if v != served_variant(base))
    same = target.variant == served_variant(base) and set(loaded_variants(base)) == {target.variant, *standby}
    cfg = base if same else with_variant(base, target.variant, standby)
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


# After a load returns, how long the READY versions may take to become the policy's: measured at once on 2.51.
VERSIONS_SETTLE_S = 2.0
Standby = Callable[[str], "str | None"]  # the served variant → the variant to keep loaded beside it, or None


def standby_kept(base: ModelConfig, target_variant: str, standby: Standby | None) -> tuple[str, ...]:
    """What to keep loaded beside ``target_variant`` in the next load: a variant already loaded below it (a step
    down to a loaded version keeps what lies below that; any other load keeps the standby ``standby`` names for
    the target, if Triton holds it now). A load never adds a standby: that is :meth:`Applier.prepare_standby`'s,
    at a quiet moment, so that a reload under load loads only what serves."""
    if standby is None:
        return ()
    loaded = loaded_variants(base)
    try:
        versions = variant_versions(base)
    except TrituneError:
        return ()
    if target_variant not in versions:
        return ()
    if target_variant in loaded and target_variant != served_variant(base):
        return tuple(v for v in loaded if versions[v] < versions[target_variant])
    wanted = standby(target_variant)
    if wanted and wanted in loaded and wanted in versions and versions[wanted] < versions[target_variant]:
        return (wanted,)
    return ()


class Applier:
    """Applies one config at a time: get_model_config → change → load_model(config=…) → wait READY.

    With ``standby`` (the public model of a tritune build), the variant it names for the served one is kept loaded
    and warm beside it, at a lower version: a switch to it only unloads the versions above it, which Triton does
    at once with no reload (docs/known_issues.md, "Several versions loaded at once")."""

    def __init__(
        self, client: InferenceClient, model: str, ready_timeout_s: float = 60.0, standby: Standby | None = None
    ):
        self.client, self.model, self.ready_timeout_s = client, model, ready_timeout_s
        self.standby = standby
        self._last: ModelConfig | None = None  # what Triton last served: the base when the model is gone

    def live(self) -> ModelConfig:
        """Triton's config of the model, with the READY versions as its version policy on a public model: a
        version that stays loaded across a change of the loaded set keeps the policy it was loaded with."""
        cfg = self.client.model_config(self.model)
        if "variant_versions" not in cfg.parameters:
            return cfg
        return replace(cfg, version_policy=VersionPolicy(specific=self.client.ready_versions(self.model)))

    def current(self) -> tuple[ModelConfig, ServingConfig]:
        cfg = self.live()
        self._last = cfg
        return cfg, serving_config(cfg)

    def apply(self, target: ServingConfig) -> ApplyResult:
        start = time.monotonic()
        try:
            try:
                base = self.live()
            except ModelNotFoundError:
                if self._last is None:
                    raise
                base = self._last  # not loaded (e.g. Triton restarted without it): load it from what it was
            new = model_config(base, target, standby=standby_kept(base, target.variant, self.standby))
            live = self._load(new)
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

    def _load(self, new: ModelConfig) -> ServingConfig:
        self.client.load(self.model, config=new)  # returns when the new copy is loaded (or failed)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.client.is_ready(self.model):
            # A server that stopped answering will not make the model READY: say so at once, so that the caller
            # (the control loop, which is not scraping while it waits here) sees the outage now, not after 60 s.
            if not self.client.is_live():
                raise ServerUnavailableError(
                    f"Triton at {self.client.url} stopped answering while {self.model} loaded; was it stopped?"
                )
            if time.monotonic() > deadline:
                raise AdminError(f"{self.model} not READY {self.ready_timeout_s:.0f} s after the load")
            time.sleep(0.05)
        # The load returns with the new versions READY, and the versions that leave are UNLOADING at once (out of
        # the metadata's READY list). Another set means another server answers (Triton restarted to its
        # repository's config while the load was in flight) or another client changed the model: say so now,
        # as a config that reads back differently does, rather than wait for a set that will not come.
        wanted = new.version_policy.specific if "variant_versions" in new.parameters and new.version_policy else None
        if wanted is not None:
            settle = time.monotonic() + VERSIONS_SETTLE_S
            while (ready := self.client.ready_versions(self.model)) != tuple(sorted(wanted)):
                if time.monotonic() > settle:
                    raise AdminError(
                        f"{self.model} has versions {list(ready)} READY after loading {sorted(wanted)}; "
                        "was Triton restarted or the model changed by another client?"
                    )
                time.sleep(0.05)
        return serving_config(self.live())

    def prepare_standby(self) -> ApplyResult | None:
        """Load the served variant's standby beside it (the served version stays as it is and keeps serving: only
        the loaded versions change); None when there is nothing to load."""
        start = time.monotonic()
        try:
            if self.standby is None:
                return None
            base = self.live()
            served = served_variant(base)
            try:
                versions = variant_versions(base)
            except TrituneError:
                return None
            wanted = self.standby(served)
            if not wanted or wanted not in versions or versions[wanted] >= versions.get(served, 0):
                return None
            if wanted in loaded_variants(base):
                return None
            new = with_variant(base, served, (wanted,))
            live = self._load(new)
            if live.variant != served or wanted not in loaded_variants(self.live()):
                raise AdminError(f"{self.model} reports {live.describe()} after loading standby {wanted}")
            self._last = new
            return ApplyResult(True, time.monotonic() - start, config=new)
        except TrituneError as exc:
            return ApplyResult(False, time.monotonic() - start, error=str(exc))
