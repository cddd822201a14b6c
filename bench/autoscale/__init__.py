"""`make bench-autoscale`: one ramp against an autoscaled cluster and static ones; cli.py."""
