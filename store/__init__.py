"""The HDF5 feature store: reading, writing, parts and merging, and the provenance every store records.

The only user of h5py; no torch, no scikit-learn. Imports from the core (``alexfeat.*``) only.
"""
