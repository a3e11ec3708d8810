"""``portable-ep check``: the identical accuracy and latency checks every target must pass."""
