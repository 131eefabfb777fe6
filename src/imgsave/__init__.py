"""imgsave: generate, audit and repair scene images in a PostgreSQL JSONB document, losing
none. The folders are its layers, each importing only those below it: `core` (pure),
`adapters` (one per outside system), `operations`, `terminal`, `commands`, `cli`; `errors` and
`logs` are imported from anywhere; `_demo` stands apart."""

__version__ = "0.1.0"
