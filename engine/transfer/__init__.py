"""Moving KV blocks between workers. Block ids in, bytes moved; only this package turns
block ids into transfer descriptors."""
