"""Adapters that `bench.versus` runs in child processes, one per implementation. Each is a script run with the
interpreter of the implementation's own environment; it imports only torch, that implementation and
`bench._probe`, builds a `bench._probe.Engine` from the shared workload files and prints one JSON line."""
