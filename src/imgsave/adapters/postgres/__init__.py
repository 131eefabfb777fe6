"""PostgreSQL: the pool and every statement imgsave runs (`database.py`, the only module that
connects, psycopg's errors translated into imgsave's), the SQL `imgsave sql` installs
(`install.py`), and the embedded server (`embedded.py`). It imports only the core, `errors`
and `logs`."""
