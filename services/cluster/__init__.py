"""A whole local cluster and its parts: `tandem serve`, the Ray worker pools, our Redis
server, the worker registry in Redis, fetching models, and launch helpers that start
`tandem serve` / `tandem worker` as child processes (for tests and benchmarks)."""
