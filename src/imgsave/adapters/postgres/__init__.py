"""PostgreSQL: the connector (`connector.py`, the only module that connects: the pool, retries,
deadlines, streams, tables made under one lock; psycopg's errors become imgsave's there), the
app's table (`database.py`: documents read, the locked write), the statements of imgsave's own
tables (`ledger_rows.py`, `claim_rows.py`, `journal_rows.py`, `batch_rows.py`) and of its
identity (`identity.py`), the SQL `imgsave sql` installs (`install.py`, filling the `.sql` files
in `sql/` with psycopg.sql), and the embedded server (`embedded.py`). It imports only the core,
`errors`, `logs` and its own modules."""
