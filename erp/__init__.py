"""Composition root of the ERP service: settings, wiring, CLI and embedded servers."""
