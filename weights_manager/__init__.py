"""Finding, converting, validating and loading weights (official checkpoints and our format)."""
