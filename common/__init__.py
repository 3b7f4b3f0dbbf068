"""Code shared by the montessori services: config, artifacts, models, errors, logging."""
