"""Decide: pure functions from (window, current config, state, context, now) to (decision, new state).

No I/O happens here, so every rule can be tested tick by tick with a fake clock. The modules, by what they own:

* :mod:`~orchestrator.policy.types`: the vocabulary — enums (direction, action, rule, pressure kind, verdict),
  the context (objective, variants, hardware), proposals and decisions.
* :mod:`~orchestrator.policy.signals`: what a window says — pressure, light load, busy share, backlog, SLO met.
* :mod:`~orchestrator.policy.rules`: the rule ladder (:class:`RulePolicy`) that proposes the next config.
* :mod:`~orchestrator.policy.guards`: guard rails that wrap any policy (bounds, delays, cool-down, the floor).
* :mod:`~orchestrator.policy.controller`: one tick (:func:`step`): restarts, drains, verification, rollback.
"""

from orchestrator.policy.controller import (
    DRAIN_WAIT_S,
    SUMMARY_WINDOW_S,
    ControllerConfig,
    ControllerState,
    Pending,
    applied,
    apply_failed,
    judge,
    step,
)
from orchestrator.policy.guards import GuardConfig, GuardState, clamp, guard
from orchestrator.policy.rules import FAR_OVER_SLO, FREE_VARIANT_SPEEDUP, Policy, RulePolicy, standby_variant
from orchestrator.policy.signals import (
    BACKLOG_PER_INSTANCE,
    Pressure,
    Thresholds,
    backlog_drain_ms,
    backlog_pressure,
    busy_share,
    has_backlog,
    instance_cap,
    light,
    pressure,
    slo_met,
    usable_cores,
    utilization,
)
from orchestrator.policy.types import (
    Action,
    Context,
    Decision,
    Direction,
    Objective,
    PressureKind,
    Proposal,
    Rule,
    VariantInfo,
    Verdict,
    unmeasured,
    variants_from_manifest,
)
from tritune.serving import ServingConfig

__all__ = [
    "BACKLOG_PER_INSTANCE",
    "DRAIN_WAIT_S",
    "FAR_OVER_SLO",
    "FREE_VARIANT_SPEEDUP",
    "SUMMARY_WINDOW_S",
    "Action",
    "Context",
    "ControllerConfig",
    "ControllerState",
    "Decision",
    "Direction",
    "GuardConfig",
    "GuardState",
    "Objective",
    "Pending",
    "Policy",
    "Pressure",
    "PressureKind",
    "Proposal",
    "Rule",
    "RulePolicy",
    "ServingConfig",
    "Thresholds",
    "VariantInfo",
    "Verdict",
    "applied",
    "apply_failed",
    "backlog_drain_ms",
    "backlog_pressure",
    "busy_share",
    "clamp",
    "guard",
    "has_backlog",
    "instance_cap",
    "judge",
    "light",
    "pressure",
    "slo_met",
    "standby_variant",
    "step",
    "unmeasured",
    "usable_cores",
    "utilization",
    "variants_from_manifest",
]
