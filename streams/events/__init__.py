"""Event payloads on the wire, one module per business module."""
