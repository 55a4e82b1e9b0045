"""The policy's vocabulary: what it reads besides the window (:class:`Context`), what it proposes and decides, and
the enums that name directions, actions, rules and kinds of pressure."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from orchestrator.policy.profile import ServiceProfile
from tritune.compare import AccuracyVerdict, Comparison, compare, unpack
from tritune.errors import ConfigError
from tritune.manifest import Manifest
from tritune.serving import ServingConfig


class Direction(StrEnum):
    """Which way a proposal moves the capacity: it sets the persistence delay and how the action is verified."""

    UP = "up"  # more capacity: must show an improvement
    DOWN = "down"  # less capacity or more accuracy: must not hurt
    FREE = "free"  # better on both (a dominating variant, headroom): no delay, kept unless the windows say worse


class Action(StrEnum):
    HOLD = "hold"
    APPLY = "apply"
    ROLLBACK = "rollback"
    REAPPLY = "reapply"


class Rule(StrEnum):
    """The rules of the ladder (what a proposal does) and the controller's own (why it holds or acts)."""

    # ladder: at any load
    FREE_FASTER_VARIANT = "free-faster-variant"
    PROVISION_HEADROOM = "provision-headroom"
    # ladder: under pressure
    BATCH_AND_ADD_INSTANCE = "batch-and-add-instance"
    ENABLE_DYNAMIC_BATCHING = "enable-dynamic-batching"
    ADD_INSTANCE = "add-instance"
    LENGTHEN_QUEUE_DELAY = "lengthen-queue-delay"
    FASTER_VARIANT = "faster-variant"
    # ladder: light load
    RESTORE_VARIANT = "restore-variant"
    SHORTEN_QUEUE_DELAY = "shorten-queue-delay"
    REMOVE_INSTANCE = "remove-instance"
    # guard rails
    STEADY = "steady"
    COOLDOWN = "cooldown"
    AT_LIMIT = "at-limit"
    # controller
    RETRY_WAIT = "retry-wait"
    ENFORCE_ACCURACY_FLOOR = "enforce-accuracy-floor"
    TRITON_RESTARTED = "triton-restarted"
    STALLED = "stalled"
    DRAINING = "draining"
    VERIFYING = "verifying"
    ROLLBACK = "rollback"


class PressureKind(StrEnum):
    P99 = "p99"  # Triton's p99 over the SLO
    MEAN_LATENCY = "mean-latency"  # the window's mean latency over a share of the SLO
    BACKLOG = "backlog"  # requests pending beyond what the instances absorb
    BUSY = "busy"  # instances executing all the time: latency still in bounds, no headroom left


class Verdict(StrEnum):
    """One window after an action, against the window that triggered it."""

    BETTER = "better"
    WORSE = "worse"
    SAME = "same"
    IDLE = "idle"  # no traffic: no evidence either way


@dataclass(frozen=True)
class VariantInfo:
    name: str
    model_name: str
    top1: float
    latency_ms_b32: float  # in-process ORT latency at batch 32: the relative cost of the variant
    correct: str | None = None  # per-image correctness on the held-out images (tritune.compare.pack), if built
    # False for the one model served without a manifest: its accuracy is unknown, so no floor can judge it and the
    # ladder is off (the policy tunes batching and instances only).
    measured: bool = True

    @property
    def meets(self) -> float:
        return self.top1 if self.measured else float("inf")

    def not_worse_than(self, other: VariantInfo) -> bool:
        """At least as accurate: not significantly worse in the paired test (tritune/compare.py); on the point
        estimates where either lacks per-image results."""
        return self.comparison(other).verdict != AccuracyVerdict.WORSE

    def comparison(self, other: VariantInfo) -> Comparison:
        mine = unpack(self.correct) if self.correct else None
        theirs = unpack(other.correct) if other.correct else None
        return compare(mine, theirs, self.top1, other.top1)


def unmeasured(variant: str, model_name: str) -> dict[str, VariantInfo]:
    """The policy's view of a model served without a manifest: one variant, accuracy unknown, no ladder."""
    return {variant: VariantInfo(variant, model_name, 0.0, 1.0, measured=False)}


def variants_from_manifest(manifest: Manifest, names: set[str] | dict | None = None) -> dict[str, VariantInfo]:
    """The policy's view of the manifest's variants (all, or those in ``names``: the public model's versions)."""
    return {
        name: VariantInfo(name, v.model_name, float(v.top1), v.latency_ms_b32, v.correct)
        for name, v in manifest.variants.items()
        if names is None or name in names
    }


@dataclass(frozen=True)
class Objective:
    p99_latency_ms: float
    accuracy_floor: float = 0.0  # absolute top-1, 0..1

    def __post_init__(self) -> None:
        if not self.p99_latency_ms > 0:
            raise ConfigError(f"--slo-p99-ms must be > 0, got {self.p99_latency_ms}")
        if not 0 <= self.accuracy_floor <= 1:
            raise ConfigError(f"--accuracy-floor is a top-1 fraction in [0, 1], got {self.accuracy_floor}")


@dataclass(frozen=True)
class Context:
    """What the policy may know besides the window: the objective, the variants, the hardware.

    ``cores`` has no default: the caller says how many cores Triton may use (the CLI's ``--cores``), since on
    the CPU it bounds instances × threads.
    """

    objective: Objective
    variants: dict[str, VariantInfo]
    cores: int
    kind: str = "cpu"  # or "gpu"
    max_instances: int = 4
    min_instances: int = 1
    max_batch_size: int = 64
    max_queue_delay_us: int = 0  # 0: a quarter of the SLO
    gpu_memory_per_instance_bytes: float = 0.0
    # CPU: hold batching and one instance per core at any load (instances share the same cores, so an idle one
    # costs memory only): the capacity is then in place before load rises, with no reload under load. This default
    # is the orchestrate command's and the benchmarks' default too.
    headroom: bool = True
    # The service rates learned so far (the controller's state, handed in each tick): what a switch predicts.
    profile: ServiceProfile = field(default_factory=ServiceProfile)

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ConfigError(f"--cores must be at least 1, got {self.cores}")
        allowed = [v for v in self.variants.values() if v.meets >= self.objective.accuracy_floor]
        if not allowed:
            best = max((v.top1 for v in self.variants.values()), default=0.0)
            raise ConfigError(
                f"no variant reaches the accuracy floor {self.objective.accuracy_floor:.4f} "
                f"(best top-1 is {best:.4f}); lower --accuracy-floor"
            )

    @property
    def keeps_headroom(self) -> bool:
        """Headroom applies on the CPU only: on a GPU an idle instance holds memory another model could use."""
        return self.headroom and self.kind == "cpu"

    @property
    def delay_cap_us(self) -> int:
        return self.max_queue_delay_us or int(self.objective.p99_latency_ms * 1000 / 4)

    def allowed_variants(self) -> list[VariantInfo]:
        """Variants at or above the floor, fastest first."""
        ok = [v for v in self.variants.values() if v.meets >= self.objective.accuracy_floor]
        return sorted(ok, key=lambda v: (v.latency_ms_b32, -v.top1))

    def most_accurate(self) -> VariantInfo:
        return max(self.allowed_variants(), key=lambda v: (v.top1, -v.latency_ms_b32))

    def allows(self, variant: str) -> bool:
        """Known and at or above the accuracy floor."""
        info = self.variants.get(variant)
        return info is not None and info.meets >= self.objective.accuracy_floor

    def cost(self, variant: str) -> float:
        info = self.variants.get(variant)
        return info.latency_ms_b32 if info else float("inf")


@dataclass(frozen=True)
class Proposal:
    config: ServingConfig
    direction: Direction
    rule: Rule
    reason: str

    def __post_init__(self) -> None:  # a policy of one's own may give the plain strings
        object.__setattr__(self, "direction", Direction(self.direction))


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str  # a :class:`Rule`, or ``waiting-<direction>-delay`` while a proposal persists
    reason: str
    config: ServingConfig | None = None
    verified: dict | None = None  # outcome of the previous action, when this tick judged it
    direction: Direction | None = None  # of the proposal an apply carries out

    @property
    def changes(self) -> bool:
        return self.action != Action.HOLD and self.config is not None
