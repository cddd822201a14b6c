"""A worker: one engine behind gRPC.

core.py          Worker: the engine's work for the rpcs (prefill, decode, abort, stats)
servicer.py      the gRPC edge: protobuf in and out through services.wire, status codes
handlers.py      what the servicer calls: the rules between an rpc and the Worker
process.py       the process entry (`tandem worker`, a Ray actor): server, heartbeat
engine_flags.py  the engine's flags and the one EngineConfig built from them
engine_thread.py the engine on a thread of its own, driven from asyncio
peers.py         a decode worker's view of the prefill workers it reads KV from
kv_publisher.py  the block pool's KV events into the worker's Redis stream
"""
