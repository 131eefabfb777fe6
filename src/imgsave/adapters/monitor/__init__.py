"""Where a run reports that it ran, for an operator's monitoring: the healthchecks.io ping
convention (`ping.py`) and the Prometheus node exporter's textfile collector (`metrics.py`).
Neither may change a run's outcome: their failures are warnings. It imports only the core,
`errors` and `logs`."""
