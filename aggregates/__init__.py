"""The domain: event-sourced aggregates. Pure Python, no I/O."""
