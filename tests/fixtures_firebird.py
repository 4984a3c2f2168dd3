"""Firebird fixtures (placeholder until the Firebird backend lands)."""
