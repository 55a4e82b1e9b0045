"""Live SLO tuner for Triton (see the orchestrator issue)."""
