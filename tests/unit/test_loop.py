"""The live loop's bookkeeping around a failed load, with a stand-in applier (the real one is exercised against a
real Triton in tests/integration/test_orchestrator.py)."""

from __future__ import annotations

import pytest

from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.metrics import Window
from orchestrator.policy import Context, Decision, Objective, ServingConfig, VariantInfo
from tritune.apply import ApplyResult

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
