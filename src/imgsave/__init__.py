"""imgsave: generate, audit and repair scene images in a PostgreSQL JSONB document, losing none."""

__version__ = "0.1.0"
