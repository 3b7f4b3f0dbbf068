"""The ``montessori`` command line."""
