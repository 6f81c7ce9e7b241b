"""The link from the backbone to its consumers: condition-query vectors, their format,
writer and reader. Below both ``trainer.backbone`` (the writer) and ``trainer.ranker``
(a reader).
"""
