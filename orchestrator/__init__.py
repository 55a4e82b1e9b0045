"""The live SLO tuner: scrape Triton's metrics into windows, decide with a pure policy behind guard rails, apply
the decision through the model-repository API, verify it and roll a regression back.

``metrics`` observes, ``policy`` decides (no I/O), ``loop`` runs the ticks, keeps the decision log and serves the
orchestrator's own /metrics, ``nvml`` reads GPU memory, ``cli`` is ``tritune orchestrate``. Applying a config is
:mod:`tritune.apply`'s, shared with the sweep and the benchmarks.
"""
