"""The event journal: a gRPC service over pluggable stores."""
