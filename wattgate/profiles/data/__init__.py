"""Shipped profile files (JSON) built by scripts/build_profiles.py; provenance in README.md here."""
