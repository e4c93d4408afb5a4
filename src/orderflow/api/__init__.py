"""The gateway's public gRPC API (orderflow.api.v1.OrderingService)."""
