from bench.routing.cli import main

main()
