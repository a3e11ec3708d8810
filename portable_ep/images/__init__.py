"""One serving image per hardware target, and the build matrix that checks each one.

``images/targets.toml`` describes the targets; ``portable-ep images build|test|matrix``
makes a wheelhouse per target, builds the image with the Docker SDK, starts it on the
example model repository, runs ``portable-ep check`` against it and merges the reports.
"""
