"""The self-hosted avatar path: the `remote_avatar` adapter (`adapter.py`), which calls an
avatar worker over gRPC, and the worker itself (`python -m adapters.remote_avatar.worker`),
which serves any local avatar adapter over the same contract (protos/tth/v1/avatar_worker.proto).
"""
