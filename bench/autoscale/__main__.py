"""`make bench-autoscale`: the autoscaler against static clusters; see cli.py."""

from bench.autoscale.cli import main

main()
