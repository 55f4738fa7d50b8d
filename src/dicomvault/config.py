"""The one settings object.

Built once at start-up from, in order of precedence: explicit overrides (command
line flags), `DICOMVAULT_*` environment variables, an optional TOML file named by
`DICOMVAULT_CONFIG_FILE` (or `--config`), and the embedded defaults: SQLite and a
local directory under `./dicomvault-data`, HTTP on 127.0.0.1:8042.

Nothing here is read at import time; callers build `Settings` and pass it down.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["DuplicatePolicy", "Settings", "load_settings"]

CONFIG_FILE_ENV = "DICOMVAULT_CONFIG_FILE"


class DuplicatePolicy(StrEnum):
    """What ingest does when different bytes arrive under a stored SOP Instance UID."""

    REJECT = "reject"
    OVERWRITE = "overwrite"
    KEEP_VERSIONS = "keep-versions"


class Settings(BaseSettings):
    """Every setting of the archive, validated when built."""

    model_config = SettingsConfigDict(
        env_prefix="DICOMVAULT_", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(
        default=Path("dicomvault-data"),
        description="Where the embedded defaults keep the index and objects.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    http_port: int = Field(default=8042, ge=0, le=65535, description="HTTP port.")
    database_url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql://user:pass@host:port/db; "
        "default: SQLite under data_dir.",
    )
    storage_url: str | None = Field(
        default=None,
        description="file:///path, s3://bucket/prefix or memory://; default: data_dir/objects.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (MinIO, Ceph, ...)."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    s3_access_key_id: str | None = Field(default=None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    object_cache_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="With objects in S3: a local copy of recently stored and read objects, "
        "up to this many bytes, under data_dir/object-cache; 0 turns it off.",
    )
    object_cache_on_store: bool = Field(
        default=False,
        description="Also copy each object into the cache as it is stored (not only when "
        "it is first read): reads of what just arrived skip S3, at a local write per object.",
    )
    duplicate_policy: DuplicatePolicy = Field(
        default=DuplicatePolicy.REJECT,
        description="Different bytes under a stored SOP Instance UID: reject, overwrite "
        "or keep-versions.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024**3, ge=1024, description="Largest request body accepted (413 above)."
    )
    spool_memory_bytes: int = Field(
        default=32 * 1024**2,
        ge=0,
        description="An upload's parts stay in memory up to this total per request (or "
        "per C-STORE instance); past it, they spool to temporary files.",
    )
    qido_max_results: int = Field(
        default=1000, ge=1, description="Most results one QIDO-RS response returns."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call DICOMweb from a browser."
    )
    import_workers: int = Field(
        default=4, ge=1, le=64, description="Batches of files `dicomvault import` ingests at once."
    )
    public_url: str | None = Field(
        default=None,
        description="The archive's base URL as clients reach it (e.g. behind a reverse proxy: "
        "https://pacs.example.org); used in RetrieveURL and BulkDataURI. Default: the URL "
        "each request arrived at.",
    )
    # The durable job queue and its workers (dicomvault.jobs).
    worker_concurrency: int = Field(
        default=2, ge=1, le=64, description="Jobs one `dicomvault worker` runs at once."
    )
    serve_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes `dicomvault serve` runs, each serving HTTP and DICOM on the "
        "same ports (one per CPU core uses them all; job workers run in the first).",
    )
    serve_workers: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Job workers run inside `dicomvault serve` (0: run `dicomvault worker`).",
    )
    job_max_attempts: int = Field(
        default=8, ge=1, description="Attempts before a failing job goes to the dead letter."
    )
    job_backoff_seconds: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles with each attempt."
    )
    job_backoff_max_seconds: float = Field(
        default=3600.0, gt=0, description="Longest delay between two attempts of a job."
    )
    job_lease_seconds: float = Field(
        default=60.0,
        ge=1,
        description="A running job whose worker stops renewing its lease for this long is "
        "run again by another worker.",
    )
    job_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often an idle worker looks for new jobs."
    )
    job_batch_wait_seconds: float = Field(
        default=0.2,
        ge=0,
        description="After a worker has caught up with the event log, how long it lets new "
        "events gather before it takes them (at most job_poll_seconds): under steady "
        "ingestion, one batch of many events instead of a round of transactions per instance.",
    )
    study_quiet_seconds: float = Field(
        default=60.0,
        ge=0,
        description="A study is ready (event study.ready) when no instance has arrived "
        "for this long.",
    )
    study_ready_check_seconds: float = Field(
        default=5.0, gt=0, description="How often workers look for studies that became ready."
    )
    inbox_prefix: str | None = Field(
        default=None,
        description="Prefix (in the object store) where other tools drop files to ingest, "
        "e.g. inbox/; none: no inbox.",
    )
    quarantine_prefix: str = Field(
        default="quarantine/",
        description="Where inbox files that cannot be stored are moved, with a reason.",
    )
    inbox_scan_seconds: float = Field(
        default=10.0, gt=0, description="How often workers list the inbox for new files."
    )
    inbox_settle_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Local directory store: a file is taken once unchanged for this long "
        "(it may still be being copied).",
    )
    inbox_sqs_queue_url: str | None = Field(
        default=None,
        description="SQS queue receiving the bucket's ObjectCreated notifications for the "
        "inbox; listing remains as a safety net.",
    )
    reconcile_seconds: float | None = Field(
        default=3600.0,
        gt=0,
        description="How often workers compare the object store with the index (none: never).",
    )
    reconcile_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="An object without an index row is adopted (or removed, if it is not a "
        "valid instance) once it has been seen for this long.",
    )
    job_modules: list[str] = Field(
        default_factory=list,
        description="Extra Python modules whose job handlers and event subscribers the "
        "workers load.",
    )
    # Access control (see access/): None means on unless the server binds loopback only.
    auth_enabled: bool | None = Field(
        default=None,
        description="Require credentials on every request; default: required unless the "
        "server listens on loopback only.",
    )
    session_hours: float = Field(
        default=12, gt=0, description="Lifetime of the token POST /auth/login hands out."
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC issuer (the iss claim).")
    oidc_audience: str | None = Field(default=None, description="OIDC audience (aud claim).")
    oidc_jwks_url: str | None = Field(default=None, description="URL of the issuer's JWKS.")
    oidc_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "PS256"],
        description="Signature algorithms accepted on OIDC tokens (asymmetric only).",
    )
    oidc_roles_claim: str = Field(default="roles", description="Claim holding role names.")
    oidc_sites_claim: str = Field(default="sites", description="Claim holding site codes.")
    oidc_role_map: dict[str, str] = Field(
        default_factory=dict,
        description="Identity-provider group or role -> dicomvault role, e.g. "
        '{"pacs-readers": "radiologist"}.',
    )
    oidc_jwks_cache_seconds: int = Field(
        default=300, ge=0, description="How long fetched signing keys are trusted."
    )
    oidc_jwks_refresh_seconds: float = Field(
        default=30,
        ge=0,
        description="Least time between two JWKS fetches forced by tokens naming unknown "
        "key ids (a flood of made-up key ids must not hammer the provider).",
    )
    encryption_key_file: Path | None = Field(
        default=None,
        description="Master key file (32 bytes, hex or base64): encrypt objects at rest.",
    )
    encryption_kms_key_id: str | None = Field(
        default=None, description="AWS KMS key (id, ARN or alias): encrypt objects at rest."
    )
    encryption_old_key_files: list[Path] = Field(
        default_factory=list,
        description="Earlier master key files, still needed to read until `dicomvault keys "
        "rotate` has re-wrapped every data key.",
    )
    encryption_old_kms_key_ids: list[str] = Field(
        default_factory=list, description="Earlier KMS keys, as for encryption_old_key_files."
    )
    kms_endpoint_url: str | None = Field(
        default=None, description="KMS endpoint (for KMS-compatible services and tests)."
    )
    s3_sse_kms_key_id: str | None = Field(
        default=None,
        description="Ask S3 to encrypt objects with this KMS key (SSE-KMS), as an "
        "alternative to encryption by the archive itself.",
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain): serve HTTPS and DICOM TLS."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of it.")
    tls_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle: require client certificates signed by it."
    )
    audit_sink: str | None = Field(
        default=None,
        description="Where audit records are also streamed as JSON lines: stdout, "
        "file:///path, or syslog://host:port (RFC 5424 over UDP).",
    )

    dicom_port: int = Field(
        default=11112, ge=0, le=65535, description="DIMSE (DICOM network) port; 0 turns it off."
    )
    ae_title: str = Field(
        default="DICOMVAULT",
        min_length=1,
        max_length=16,
        pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ][\x20-\x5b\x5d-\x7e]*$",
        description="The archive's DICOM Application Entity title (1-16 characters, no backslash).",
    )
    # The DIMSE door (dimse/): who may associate, TLS, and the limits that keep one
    # misbehaving peer from locking out the others.
    dicom_known_aes_only: bool | None = Field(
        default=None,
        description="Accept DICOM associations only from AEs of the registry (dicomvault "
        "aets add). Default: only known AEs unless the node listens on loopback only "
        "(the DICOM side of the authentication rule).",
    )
    dicom_tls_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="DICOM TLS port (PS3.15 BCP 195 profile; needs tls_cert_file); only TLS "
        "is spoken there. None: no TLS port. Set dicom_port to 0 for a TLS-only node.",
    )
    dicom_max_pdu_bytes: int = Field(
        default=262144,
        ge=4096,
        le=16 * 1024**2,
        description="Largest PDU the DICOM node accepts; a longer one ends the association "
        "before its body is read.",
    )
    dicom_max_associations: int = Field(
        default=64, ge=1, description="Established DICOM associations served at once."
    )
    dicom_max_connections_per_peer: int = Field(
        default=16,
        ge=1,
        description="Open DICOM connections from one address; above it the oldest one that "
        "has not completed association negotiation is dropped.",
    )
    dicom_acse_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a new connection has to complete negotiation."
    )
    dicom_dimse_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to wait for a DIMSE message of an association."
    )
    dicom_network_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a DICOM connection may stay silent (also mid-PDU) before it is "
        "closed.",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if self.encryption_key_file is not None and self.encryption_kms_key_id is not None:
            raise ValueError("encryption_key_file and encryption_kms_key_id: choose one")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.dicom_tls_port is not None and self.tls_cert_file is None:
            raise ValueError("dicom_tls_port needs tls_cert_file and tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} = {str(path)!r}: no such file")
        return self

    @field_validator("oidc_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            raise ValueError(f"{bad}: only asymmetric algorithms (RS*, PS*, ES*, EdDSA)")
        return value

    @field_validator("inbox_prefix", "quarantine_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        stripped = value.strip("/")
        if not stripped or ".." in stripped.split("/") or stripped.split("/")[0] in _RESERVED:
            raise ValueError("give a key prefix of its own, such as inbox/")
        return stripped + "/"

    @field_validator(
        "database_url",
        "storage_url",
        "s3_endpoint_url",
        "oidc_issuer",
        "oidc_audience",
        "oidc_jwks_url",
        "audit_sink",
        "encryption_kms_key_id",
        "kms_endpoint_url",
        "s3_sse_kms_key_id",
        "inbox_sqs_queue_url",
        "inbox_prefix",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise ValueError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # The two backend URLs fall back to the data directory; resolved here, once.
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_audience and self.oidc_jwks_url)

    @property
    def binds_loopback_only(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")

    @property
    def dicom_accepts_unknown_aes(self) -> bool:
        """Whether a calling AE missing from the registry may associate (as the local
        operator): as set, else only when the node listens on loopback only."""
        if self.dicom_known_aes_only is not None:
            return not self.dicom_known_aes_only
        return self.binds_loopback_only

    @property
    def auth_required(self) -> bool:
        """Whether requests need credentials: as set, else unless bound to loopback only."""
        if self.auth_enabled is not None:
            return self.auth_enabled
        return not self.binds_loopback_only

    @property
    def effective_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain values, secrets and passwords masked."""
        values = self.model_dump(mode="json")
        values["database_url"] = self.effective_database_url
        values["storage_url"] = self.effective_storage_url
        for key in _URL_SETTINGS:
            if values[key] is not None:
                values[key] = _mask_url(values[key])
        for key, value in list(values.items()):
            if isinstance(getattr(self, key), SecretStr) and value is not None:
                values[key] = "**********"
        return values


# Key prefixes the archive writes itself (storage.new_key, the local store's temp files).
_RESERVED = frozenset({"instances", ".tmp"})

_URL_SETTINGS = ("database_url", "storage_url", "s3_endpoint_url", "kms_endpoint_url")
_MASK = "***"
# Query parameters that carry credentials (libpq takes `?password=`, S3 URLs can sign).
_SECRET_PARAM = re.compile(r"password|passwd|secret|token|signature|credential", re.IGNORECASE)


def _mask_url(url: str) -> str:
    """`url` with the password of its user info and any credential parameter masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{host}" if has_password else netloc
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    masked = [(name, _MASK if _SECRET_PARAM.search(name) else value) for name, value in pairs]
    if netloc == parts.netloc and masked == pairs:
        return url  # as given: re-assembling could change it (sqlite:/// loses a slash)
    query = f"?{urlencode(masked, safe='*')}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; `overrides` (command-line flags) win over everything else."""
    if config_file is not None:
        os.environ[CONFIG_FILE_ENV] = str(config_file)
    clean = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**clean)
