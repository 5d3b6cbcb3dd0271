"""Images -> features: sources, decoding, networks and their backends, the Featurizer, and the drivers
that run it (local, parts, Ray, in memory). Imports from the core (``alexfeat.*``) and ``store``."""
