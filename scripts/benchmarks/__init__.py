"""imgsave's benchmarks, one module each; `scripts/bench.py` runs them and writes the results."""
