"""Model code and loaders. Our own forward pass; transformers supplies configs/tokenizers only."""
