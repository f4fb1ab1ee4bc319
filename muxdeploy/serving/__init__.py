"""Serving muxdeploy bundles: an HTTP edge server (KServe V2 + JSON) and a Ray Serve deployment."""
