"""One package per service; core logic in plain modules the in-process loop also calls."""
