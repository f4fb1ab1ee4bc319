"""Torch-free runtime for muxdeploy bundles: manifest, packer, backends. Imports only numpy."""
