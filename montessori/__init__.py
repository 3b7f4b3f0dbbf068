"""Generated gRPC code for the montessori.v1 API (`make protos`); do not edit."""
