from bench.soak.cli import main

main()
