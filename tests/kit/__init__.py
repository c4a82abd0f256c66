"""Support the tests and benchmarks share (issue 14 gathers the rest of it here)."""
