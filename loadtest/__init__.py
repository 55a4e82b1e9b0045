"""Load tests for Triton: Locust users over HTTP and gRPC (``locustfile``), load shapes as data (``shapes``), a
headless or web run into a run folder (``run``), an open-loop generator (``openloop``), steady-state measurement
(``measure``), the offline sweep (``sweep``, ``sweep_cli``) and HTML reports (``report``).
"""
