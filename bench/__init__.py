"""Every `make bench-*` target and its helpers. Each measures against a baseline in the
same run and writes bench-results/NAME.json. Never imported by engine/ or services/."""
