"""The LUM generative backbone (steps 1 and 2): tokens, causal user encoder, InfoNCE,
packing, group query, training, evaluation and versions. See docs/backbone.md.

Kept free of imports so that ``trainer.backbone.config`` stays light for the CLI.
"""
