"""Model stage: the generators and their layers, and rebuilding a generator from a training checkpoint. Imports only torch."""
