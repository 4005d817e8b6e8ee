"""The wire: event catalogue, envelope, JetStream stream and the relay that feeds it."""
