"""PostgreSQL: the pool, retries, deadlines and the document's reads and locked writes
(`database.py`, the only module that connects: psycopg's errors become imgsave's there), the
claims and journal tables' statements (`claim_rows.py`, `journal_rows.py`), the SQL `imgsave sql`
installs (`install.py`, filling the `.sql` files in `sql/` with psycopg.sql), and the embedded
server (`embedded.py`). It imports only the core, `errors`, `logs` and its own modules."""
