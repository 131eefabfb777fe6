"""Scaffolding, out of the production path: `imgsave demo`, the incident's naive route, the writes
only set-up and the incident make, and the loopback image API the tests and benchmarks use.
Nothing outside this package imports it except the `demo` command."""
