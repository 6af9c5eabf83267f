"""Porygon: a fictional document-workspace product used to demonstrate Stride."""
