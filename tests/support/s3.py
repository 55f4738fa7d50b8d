"""Buckets on the test S3 endpoint."""

from __future__ import annotations

import secrets

import boto3

__all__ = ["S3_KEY", "S3_SECRET", "new_bucket"]

S3_KEY = "testing"
S3_SECRET = "testing-secret"


def new_bucket(endpoint: str, prefix: str = "test") -> str:
    """Create a bucket with a fresh name on `endpoint` and return its name."""
    bucket = f"{prefix}-{secrets.token_hex(6)}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    ).create_bucket(Bucket=bucket)
    return bucket
