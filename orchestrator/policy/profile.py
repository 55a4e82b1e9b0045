"""Per-variant service rates learned from the live windows, and the utilization they predict for a switch.

The manifest's cost of a variant (in-process ORT latency at batch 32) ranks the variants, but it does not say what
each holds when served: Triton's own per-request work, the batch sizes the load makes, and the cores the client
shares all come on top, and they weigh more on a cheap variant than on a dear one (on the bundled data the build
says ``small`` is 3.6× cheaper than ``pruned``; served, it holds 2×). A switch predicted from the build's ratio
alone misjudges by that factor, and a switch back up the ladder then never looks safe.

So the controller learns, per variant and instance count, the service rate it saw served: images/s per replica
with every instance busy (throughput ÷ busy share), from steady windows only (no reload in progress, no second
version draining, enough busy time to extrapolate from). A prediction uses the target's own learned rate where
there is one, else the current variant's learned rate converted by the build's cost ratio, else the window's
busy share times that ratio: measured first, the build only where nothing was measured.

Windows at low load run small batches, which cost more per image than the large batches of a saturated instance,
so a learned rate errs low: a prediction errs towards "does not fit", which is the safe side for both a step
down (the next level is then asked to hold more than it must) and a step back up.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types.Context holds a profile: this module imports nothing of the policy at run time
    from orchestrator.metrics import Window
    from orchestrator.policy.types import Context
    from tritune.serving import ServingConfig

MIN_BUSY_SHARE = 0.2  # below this the busy time is too small a sample to extrapolate a service rate from
LEARNED_WINDOWS = 3  # windows a learned rate needs before it is trusted (the median of them is used)
KEPT_WINDOWS = 12  # the most recent windows kept per variant and instance count
STRAIN_MARGIN = 0.8  # a load within this share of one a config was under pressure at counts as that load
# How long a steady window counts as evidence of what a config holds. Long enough to keep the ladder from flapping
# at a load the upper level cannot hold (a restore there is retried at most once per this span), short enough that
# what one busy minute showed does not close the way back up for good: the memory is only refreshed while the
# config serves, so without an end it would never be revised.
STRAIN_MEMORY_S = 300.0
STRAIN_KEPT = 600  # at most this many windows per variant and instance count (300 s of 0.5-s windows)


class RateSource(StrEnum):
    LEARNED = "learned"  # the target's own service rate, measured while it served
    CONVERTED = "converted"  # the current variant's measured rate × the build's cost ratio
    BUILD = "build"  # the window's busy share × the build's cost ratio: nothing measured yet
    STRAINED = "strained"  # the target was under pressure at this load before: it does not fit


def service_rate(w: Window, config: ServingConfig) -> float | None:
    """One replica's images/s at ``config`` if its instances were always busy, from this window; None when the
    window is too idle (or failing) to extrapolate from."""
    # signals imports types, which holds a ServiceProfile: imported here, not at the top, to keep one owner of
    # the busy share without an import cycle
    from orchestrator.policy.signals import busy_share

    if not w.requests or w.failures or not w.replicas or w.interval_s <= 0:
        return None
    busy = busy_share(w, config)
    if busy < MIN_BUSY_SHARE or not math.isfinite(busy):
        return None
    return w.throughput_infer_per_s / w.replicas / min(busy, 1.0)


def offered_per_replica(w: Window) -> float:
    """Images/s one replica is asked for: what completed plus the backlog spread over the window (an upper bound
    on the arrivals when a backlog stands, the completions otherwise)."""
    images_per_request = w.throughput_infer_per_s / w.request_rate_per_s if w.request_rate_per_s else 1.0
    backlog = w.pending_requests * images_per_request / w.interval_s if w.interval_s > 0 else 0.0
    return (w.throughput_infer_per_s + backlog) / max(w.replicas, 1)


def _appended(table: tuple, key: tuple[str, int], value: float) -> tuple:
    """``table`` ((key, recent values) pairs) with ``value`` added to ``key``'s, the last ``KEPT_WINDOWS`` kept."""
    out = dict(table)
    out[key] = (*out.get(key, ()), value)[-KEPT_WINDOWS:]
    return tuple(out.items())


@dataclass(frozen=True)
class Prediction:
    utilization: float  # the target's predicted busy share at this window's load
    source: RateSource

    def describe(self) -> str:
        if self.source == RateSource.STRAINED:
            return "under pressure at this load before (strained)"
        return f"predicted {self.utilization:.0%} busy ({self.source})"


@dataclass(frozen=True)
class ServiceProfile:
    """Learned service rates: ((variant, instances), recent rates) pairs, oldest first. Immutable, so that the
    controller's state stays a value."""

    rates: tuple[tuple[tuple[str, int], tuple[float, ...]], ...] = ()
    # ((variant, instances), (end_s, offered images/s per replica, under pressure) of its recent steady windows): a
    # busy share says nothing about latency the CPU's other processes add, so a config seen under pressure at a
    # load is not predicted to hold that load again, whatever its busy share.
    seen: tuple[tuple[tuple[str, int], tuple[tuple[float, float, bool], ...]], ...] = ()

    def observe(self, w: Window, config: ServingConfig, under_pressure: bool = False) -> ServiceProfile:
        key = (config.variant, config.instances)
        out = self
        if w.requests:
            table = dict(out.seen)
            kept = [s for s in table.get(key, ()) if w.end_s - s[0] <= STRAIN_MEMORY_S]
            table[key] = (*kept, (w.end_s, offered_per_replica(w), under_pressure))[-STRAIN_KEPT:]
            out = replace(out, seen=tuple(table.items()))
        rate = service_rate(w, config)
        return out if rate is None else replace(out, rates=_appended(out.rates, key, rate))

    def strained(self, variant: str, instances: int, offered: float, now_s: float) -> bool:
        """Whether ``variant`` at ``instances`` was seen unable to hold ``offered`` (images/s per replica) in the
        last ``STRAIN_MEMORY_S``.

        Load is monotone: a window under pressure at a load up to 1/``STRAIN_MARGIN`` of this one counts for
        "strained", a window that held a load of at least ``STRAIN_MARGIN`` of it counts against, and the larger
        count wins. A stall of the machine (a window or two under pressure among many that held the same load) is
        outvoted; a load the config cannot hold, which puts most of its windows under pressure, is not.
        """
        windows = [s for s in dict(self.seen).get((variant, instances), ()) if now_s - s[0] <= STRAIN_MEMORY_S]
        pressed = sum(1 for _, load, p in windows if p and load <= offered / STRAIN_MARGIN)
        held = sum(1 for _, load, p in windows if not p and load >= offered * STRAIN_MARGIN)
        return pressed > held

    def held(self, variant: str, instances: int, offered: float, now_s: float) -> bool:
        """Whether ``variant`` at ``instances`` held ``offered`` (images/s per replica) in most of its recent
        windows at about that load: the counts of :meth:`strained` the other way round, with at least
        ``LEARNED_WINDOWS`` that held."""
        windows = [s for s in dict(self.seen).get((variant, instances), ()) if now_s - s[0] <= STRAIN_MEMORY_S]
        pressed = sum(1 for _, load, p in windows if p and load <= offered / STRAIN_MARGIN)
        held = sum(1 for _, load, p in windows if not p and load >= offered * STRAIN_MARGIN)
        return held >= LEARNED_WINDOWS and held > pressed

    def rate(self, variant: str, instances: int) -> float | None:
        """The median learned rate of ``variant`` at ``instances``, once enough windows measured it."""
        rates = dict(self.rates).get((variant, instances), ())
        return statistics.median(rates) if len(rates) >= LEARNED_WINDOWS else None

    def predict(self, w: Window, current: ServingConfig, target: str, ctx: Context, busy: float) -> Prediction:
        """The busy share ``target`` would have at this window's load, in ``current``'s other settings; ``busy``
        is the window's measured busy share of ``current``."""
        offered = offered_per_replica(w)
        if self.strained(target, current.instances, offered, w.end_s):
            return Prediction(math.inf, RateSource.STRAINED)
        own = self.rate(target, current.instances)
        if own:
            return Prediction(offered / own, RateSource.LEARNED)
        ratio = ctx.cost(target) / ctx.cost(current.variant)
        here = self.rate(current.variant, current.instances)
        if here:
            return Prediction(offered / here * ratio, RateSource.CONVERTED)
        return Prediction(busy * ratio, RateSource.BUILD)
