"""Internals of raymlops; nothing here is public API."""
