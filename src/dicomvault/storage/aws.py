"""boto3 clients built from the settings: one place for endpoint, region and credentials.

The S3 store's multipart uploads, KMS (master keys of encryption at rest) and SQS (the
bucket inbox's notifications) all reach the same AWS account or S3-compatible endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomvault.config import Settings

__all__ = ["client", "client_from_settings"]


def client(
    service: str,
    *,
    region: str,
    endpoint_url: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Any:
    """A boto3 client of `service` (credentials from the environment when not given)."""
    import boto3

    return boto3.client(  # type: ignore[call-overload]  # service is chosen at run time
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
    )


def client_from_settings(service: str, settings: Settings, *, endpoint_url: str | None) -> Any:
    """A boto3 client of `service` with the S3 settings' region and credentials, at
    `endpoint_url` (None: AWS's own endpoint for the region)."""
    secret = settings.s3_secret_access_key
    return client(
        service,
        region=settings.s3_region,
        endpoint_url=endpoint_url,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
    )
