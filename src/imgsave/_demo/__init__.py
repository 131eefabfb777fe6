"""Scaffolding, out of the production path: `imgsave demo`, the incident's naive route, the writes
only set-up and the incident make, and the loopback image API the tests and benchmarks use.
It may import anything of imgsave's; nothing outside it imports it but the CLI (`imgsave demo`)."""
