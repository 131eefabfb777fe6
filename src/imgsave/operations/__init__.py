"""What imgsave does with its adapters. A paying run opens its session (`session.py`), settles
what this database paid for and did not save (`settle.py`, `settled.py`), plans (`planning.py`:
read, plan, claim, less what is on its way) and buys (`generating.py`: synchronously through
`scheduler.py`, `slots.py` and `execution.py`, or through the Batch API, `batches.py`); every
image it receives goes through one sequence (`purchases.py`: the ledger row before the request,
the bytes kept by `intake.py`, the record, the batched locked save of `group_commit.py`).
`rehosting.py` and `repairing.py` are rehost's and repair's runs; `auditing.py`,
`lost_images.py`, `ledger_sightings.py` and `ledger_audit.py` audit's; `ledger_import.py` and
`upkeep.py` the ledger's upkeep; `claims.py` the scenes claimed across hosts; `stop.py` the
two-step Ctrl-C. It imports the core and the adapters, never the terminal, the commands or the
CLI."""
