"""Everything that talks across processes (router, workers, pools, KV index) and the CLI."""
