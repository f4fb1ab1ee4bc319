"""Triton Python-backend models that `muxdeploy export-triton` copies into a repository as `model.py`.

Each file runs inside Triton's Python stub, not inside muxdeploy: it imports only the standard
library, numpy, `triton_python_backend_utils` and (the packer) `muxdeploy.runtimes.packing` copied beside it.
"""
