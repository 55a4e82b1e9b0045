"""The console layer: the ``tritune`` command and the jobs that drive several packages at once (the demo).

It sits above every other package (builders, loadtest, orchestrator, tritune's base) and nothing imports it, so a
command starts by importing only what its subcommand needs.
"""
