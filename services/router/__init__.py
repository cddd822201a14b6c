"""The OpenAI-compatible router: HTTP at the edge (app.py), workers behind a Backend.

dispatch.py       Dispatcher (the Backend): each request's path through the worker pools
cluster_view.py   ClusterView: registry, KV feed and load gauges, kept fresh in the background
worker_client.py  WorkerClient: one worker's rpcs, typed (services.wire converts)
workers.py        WorkerSet: the live workers, one client each, requests in flight
routing.py        which worker of a pool gets a prompt (--routing)
"""
