"""Generated from proto/ by `make proto` (grpcio-tools); do not edit. A test fails when
these files are stale."""
