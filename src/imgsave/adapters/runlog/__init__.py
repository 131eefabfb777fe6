"""The generation log on disk: the writer (`writer.py`, one fsynced JSON line per event, each
naming its database), the markers of this host's runs not yet all in the ledger
(`unsettled.py`, with `processes.py`: is a run gone), the reader of imgsave's and other
systems' logs (`reader.py`, line by line; `bulk_reader.py`, the same as bytes in blocks),
audit's worker processes (`workers.py`, started as `worker_main`), and the host-wide lock file
of `repair --execute` (`host_lock.py`). It imports only the core, `errors` and `logs`."""
