"""One folder per outside system, each translating every error of its library into imgsave's:
`postgres` (the pool, the statements, the SQL imgsave installs), `imageapi` (the image API
client, its pace, downloads), `storage` (object storage and the spool), `runlog` (the
generation log's writer and reader). An adapter imports only the core, `errors`, `logs` and
its own folder: never another adapter, never the operations above it."""
