"""Which worker holds which KV blocks: the Redis stream layout workers publish into
(stream.py), the router's in-memory index (index.py) and the feed that keeps it true
(feed.py)."""
