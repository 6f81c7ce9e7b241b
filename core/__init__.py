"""The bottom layer every lumstream package stands on: the settings engine, durable files
and versioned directories, local paths, process signals and logging.

It imports no other package of the project (a test enforces the layering).
"""
