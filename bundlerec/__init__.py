"""bundlerec: real-time personalized bundle recommendations as gRPC services."""
