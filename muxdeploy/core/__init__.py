"""The foundation every layer imports: errors, atomic file writes, the bundle manifest, ONNX file I/O, install extras.

Imports only the standard library and numpy at module level (`onnx_io` imports onnx inside its functions), so the
torch-free runtime builds on it.
"""
