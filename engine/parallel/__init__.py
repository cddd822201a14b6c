"""Tensor parallelism inside one worker: several processes, one model (heads and MLP
columns sharded), rank 0 schedules and the others follow its steps."""
