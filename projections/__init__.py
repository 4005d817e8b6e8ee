"""Read models in PostgreSQL, built from the JetStream stream."""
