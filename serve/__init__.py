"""``alexfeat serve``: a model as a long-running HTTP service that batches concurrent requests.

``config`` holds the settings and what the two sides exchange; ``model`` is the torch side (decode
bytes, run a batch); ``batcher`` the inference worker and its queue; ``app`` the HTTP side (FastAPI,
no torch); ``server`` wires them together under uvicorn.
"""
