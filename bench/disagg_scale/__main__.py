from bench.disagg_scale.cli import main

main()
