"""TTH server: a real-time gRPC service that turns text into a talking face."""
