"""`make soak`: minutes of saturation while workers are killed; see cli.py."""
