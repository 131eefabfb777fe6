"""The generation log on disk: the writer (`writer.py`, one fsynced JSON line per event), the
reader of imgsave's and other systems' logs (`reader.py`, line by line; `bulk_reader.py`, the
same as bytes in blocks), audit's worker processes (`workers.py`, started as `worker_main`),
and the host-wide lock file of `repair --execute` (`host_lock.py`). It imports only the core,
`errors` and `logs`."""
