"""`bundlerec console`: the operator console, a small web process over the suite's public APIs.

It reads through the gateway's and the services' gRPC APIs (a preview is a Recommend call with
debug and preview set, so it records nothing), the gateway's Prometheus endpoint and the models
directory the ranker serves from; its one write is the explicit promote or rollback of a model
version, behind a confirmation, through the same module `bundlerec models` uses. It keeps nothing
about shoppers: every page is read when it is asked for, so an erasure leaves nothing behind here.
"""
