from services.bench_routing.cli import main

main()
