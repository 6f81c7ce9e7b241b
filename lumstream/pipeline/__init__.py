"""Pipelines that compose the packages below into one running whole (the demo), as
library code: commands start them, tests reach them without a subprocess."""
