"""The streaming ranker (LUM step 3): TorchRec tables, DIN + LUM features, progressive
validation, checkpoints and multi-epoch sparse-reset. See docs/ranker.md.

Kept free of imports so that ``trainer.ranker.config`` stays light for the CLI.
"""
