"""Test helpers: real backends (PostgreSQL, an S3 endpoint) and a live server."""
