"""Where and how many: the drivers that run the one featurize pipeline (``featurizer.run``). A driver
imports ``featurizer.run`` and ``featurizer.sink``, never another driver."""
