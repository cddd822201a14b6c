"""Everything that talks across processes, one room per capability:

router/   the OpenAI-compatible HTTP edge and each request's path through the workers
worker/   an engine behind gRPC, its heartbeat, peers and KV publisher
cluster/  `tandem serve`: Ray pools, our Redis, the registry, launch helpers
kv/       KV event streams in Redis, the router's KV index and its feed
wire/     the only place protobuf becomes Python objects and back (rpc, KV events, records)
cli.py    the `tandem` command
"""
