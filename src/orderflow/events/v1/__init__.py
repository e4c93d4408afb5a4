"""Generated protobuf messages of the events (do not edit; run `make protos`)."""
