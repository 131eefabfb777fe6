"""Object storage: the store (`object_store.py`, obstore's errors translated) and the spool in
the log directory for paid bytes the store would not take yet (`spool.py`). It imports only
the core, `errors` and `logs`."""
