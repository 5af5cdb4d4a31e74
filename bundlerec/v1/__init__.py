"""The v1 API: *_pb2*.py(i) are generated here from protos/bundlerec/v1 at install time (setup.py)."""
