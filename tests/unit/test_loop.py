"""The live loop's bookkeeping around a failed load, with a stand-in applier (the real one is exercised against a
real Triton in tests/integration/test_orchestrator.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.metrics import Window
from orchestrator.policy import Context, Decision, Objective, ServingConfig, VariantInfo
from tritune.apply import ApplyResult
from tritune.errors import ServerUnavailableError

VARIANTS = {
    "fp32": VariantInfo("fp32", "cnn_fp32", 0.978, 8.0),
    "int8": VariantInfo("int8", "cnn_int8", 0.978, 4.0),
}
BEFORE = ServingConfig("int8", 1, 2, True, 1000, ())
TARGET = ServingConfig("int8", 2, 1, True, 1000, ())


class RefusingApplier:
    """Triton refuses the load; afterwards it serves ``live``."""

    def __init__(self, live: ServingConfig):
        self.live = live

    def apply(self, target: ServingConfig) -> ApplyResult:
        return ApplyResult(ok=False, seconds=0.1, error="load refused")

    def current(self):
        return None, self.live


@pytest.mark.parametrize(
    ("live", "current", "suspect"),
    [
        (BEFORE, BEFORE, False),  # the usual failed load: Triton keeps the old copy
        (TARGET, TARGET, False),  # loaded after all (the read-back raced the load): in sync with what serves
        # Triton restarted to the repository's default while the load was in flight: keep what we had set, so the
        # next tick's restart check sees the difference and re-applies the last good config
        (ServingConfig("fp32"), BEFORE, True),
    ],
)
def test_a_failed_load_resyncs_with_what_triton_serves_or_suspects_a_restart(tmp_path, live, current, suspect):
    ctx = Context(objective=Objective(50.0), variants=VARIANTS, cores=2)
    orch = Orchestrator(RefusingApplier(live), ctx, LoopOptions(decision_log=tmp_path / "d.jsonl"))
    orch.current = BEFORE
    orch._act(Decision("apply", "add-instance", "busy", TARGET), Window(start_s=0.0, end_s=1.0), now=1.0)
    assert orch.history[-1]["event"] == "apply-failed"
    assert orch.current == current and orch._suspect_restart is suspect
    orch.close()


def test_options_travel_to_an_orchestrator_in_another_process():
    # The benchmarks run the orchestrator in a process of its own (spawn): its options must pickle.
    import pickle

    opts = LoopOptions(model="cnn", metrics_url="http://127.0.0.1:1/metrics")
    assert pickle.loads(pickle.dumps(opts)).status is opts.status


class StandbyApplier:
    """Loads a standby when asked (counted)."""

    def __init__(self):
        self.standby, self.prepared = None, 0

    def current(self):
        return None, BEFORE

    def apply(self, target: ServingConfig) -> ApplyResult:
        return ApplyResult(ok=True, seconds=0.1)

    def prepare_standby(self) -> ApplyResult:
        self.prepared += 1
        return ApplyResult(ok=True, seconds=0.5)


def test_the_standby_is_loaded_once_per_change_past_the_cool_down_and_never_while_verifying(tmp_path):

    from orchestrator.policy import GuardState

    ctx = Context(objective=Objective(50.0), variants=VARIANTS, cores=2)
    applier = StandbyApplier()
    orch = Orchestrator(applier, ctx, LoopOptions(decision_log=tmp_path / "d.jsonl"), clock=lambda: 31.0)
    assert applier.standby("fp32") == "int8"  # 2× cheaper, as accurate: the first rung a step would take
    orch.current = ServingConfig("fp32")
    orch.state = replace(orch.state, guard=GuardState(last_action_s=10.0))
    orch._prepare_standby(now=12.0)  # inside the cool-down: Triton is still busy with the last change
    assert applier.prepared == 0
    orch._prepare_standby(now=20.0)
    assert applier.prepared == 1 and orch.history[-1]["event"] == "standby"
    assert orch.history[-1]["variant"] == "int8"
    orch._prepare_standby(now=30.0)
    assert applier.prepared == 1  # once per change
    orch._act(Decision("apply", "add-instance", "busy", TARGET), Window(start_s=30.0, end_s=31.0), now=31.0)
    orch._prepare_standby(now=60.0)
    assert applier.prepared == 1  # the change is being verified
    orch.state = replace(orch.state, pending=None)
    orch._prepare_standby(now=61.0)
    assert applier.prepared == 2
    orch.close()


class FailingStandbyApplier(StandbyApplier):
    """The standby's load fails; afterwards Triton serves ``live`` (None: it does not answer)."""

    def __init__(self, live: ServingConfig | None):
        super().__init__()
        self.live = live

    def current(self):
        if self.live is None:
            raise ServerUnavailableError("Triton at 127.0.0.1:1 is unreachable")
        return None, self.live

    def prepare_standby(self) -> ApplyResult:
        self.prepared += 1
        return ApplyResult(ok=False, seconds=0.2, error="Triton stopped answering while cnn loaded")


@pytest.mark.parametrize(
    ("live", "suspect"),
    [
        (ServingConfig("fp32"), False),  # the load failed and Triton kept the served copy: nothing else to do
        # Triton died while the standby loaded (no scrape saw it: the tick waited on the load) and came back with
        # the repository's config, or does not answer yet: the next tick's restart check re-applies the last good
        (ServingConfig("int8"), True),
        (None, True),
    ],
)
def test_a_failed_standby_load_suspects_a_restart_when_triton_serves_something_else(tmp_path, live, suspect):
    ctx = Context(objective=Objective(50.0), variants=VARIANTS, cores=2)
    applier = FailingStandbyApplier(live)
    orch = Orchestrator(applier, ctx, LoopOptions(decision_log=tmp_path / "d.jsonl"))
    orch.current = ServingConfig("fp32")
    orch._prepare_standby(now=100.0)
    assert applier.prepared == 1 and orch.history[-1]["event"] == "standby-failed"
    assert orch._suspect_restart is suspect and orch.current == ServingConfig("fp32")
    orch.close()


def test_no_standby_when_switched_off(tmp_path):
    applier = StandbyApplier()
    ctx = Context(objective=Objective(50.0), variants=VARIANTS, cores=2)
    orch = Orchestrator(applier, ctx, LoopOptions(decision_log=tmp_path / "d.jsonl", standby=False))
    orch.current = BEFORE
    orch._prepare_standby(now=100.0)
    assert applier.standby is None and applier.prepared == 0
    orch.close()


def test_the_standby_waits_for_light_load(tmp_path):
    # Loading a version takes a core for a second or two: with the instances 80% busy that core is the served
    # requests', so the standby waits for a window under half busy.
    applier = StandbyApplier()
    ctx = Context(objective=Objective(50.0), variants=VARIANTS, cores=2)
    orch = Orchestrator(applier, ctx, LoopOptions(decision_log=tmp_path / "d.jsonl"))
    orch.current = ServingConfig("fp32", instances=1)
    busy = Window(start_s=0.0, end_s=1.0, requests=500, avg_latency_ms=4.0, busy_s=0.8)
    orch._prepare_standby(now=100.0, w=busy)
    assert applier.prepared == 0
    orch._prepare_standby(now=101.0, w=replace(busy, busy_s=0.2))
    assert applier.prepared == 1
    orch.close()
