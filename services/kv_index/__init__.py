"""The router's KV index: an in-memory map of cached blocks (index) fed from Redis (feed)."""
