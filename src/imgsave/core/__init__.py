"""The pure core: documents and scene identity, byte-exact JSON text splicing, generate's plan,
prices and caps, image signatures and keys, the URL rule, what the logs and the journal say each
scene should hold and how that differs from the documents, redaction, result JSON, and the
settings. No I/O of an outside system lives here, so all of it is tested with plain values and
hypothesis. It imports nothing of imgsave's but `imgsave.errors` (and other core modules)."""
