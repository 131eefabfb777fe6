"""What imgsave does with its adapters: executing a plan of provider calls (`execution.py`),
the batched locked save (`group_commit.py`), the image intake from answer to permanent URL
(`intake.py`), many projects under one bound (`scheduler.py`, `slots.py`), claims across hosts
(`claims.py`), recovering what earlier runs received (`recovery.py`), the two-step stop
(`stop.py`) and the audit's rules (`lost_images.py`). It imports the core and the adapters,
never the terminal, the commands or the CLI."""
