"""The choice lists of the classifiers' settings, defined once for the core's checks and the CLI's options.

No scikit-learn here: the command line builds its choices from these tuples and must answer --help at once.
"""

from __future__ import annotations

__all__ = ["KINDS", "SCALES", "KERNELS", "PROBES"]

KINDS = ("svm", "logreg", "mlp")
SCALES = ("standard", "l2", "none")  # feature scaling before the classifier
KERNELS = ("linear", "rbf")  # fit-svm
# What probe compares: the fit-* kinds with their defaults, and fit-svm --kernel rbf.
PROBES = ("logreg", "svm", "svm-rbf", "mlp")
