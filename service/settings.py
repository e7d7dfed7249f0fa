"""Service settings: ``SNNL_*`` environment variables, each also a ``snnl serve`` flag."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.defaults import DEFAULTS
from snnl.errors import InputError
from snnl.monitoring import DriftSettings

MIN_API_KEY_LENGTH = 16


class Settings(BaseSettings):
    """Every knob of the service; unsafe or meaningless values are refused at start-up.

    A setting ``max_queue`` is read from ``SNNL_MAX_QUEUE`` and set by ``--max-queue``.
    """

    model_config = SettingsConfigDict(env_prefix="SNNL_", extra="forbid", frozen=True)

    model_repository: Path = Field(
        DEFAULTS["model_repository"], description="Model repository: one folder a model."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        DEFAULTS["device"], description="Where models run: auto picks cuda when a GPU is present."
    )
    max_batch_size: int = Field(
        DEFAULTS["max_batch_size"],
        ge=1,
        le=8192,
        description="Most samples one scoring call of a model runs at once.",
    )
    max_batch_wait_ms: float = Field(
        DEFAULTS["max_batch_wait_ms"],
        ge=0.0,
        le=1000.0,
        description="Longest a queued sample waits for others to fill its batch (0: no wait).",
    )
    max_queue: int = Field(
        DEFAULTS["max_queue"],
        ge=1,
        le=1_000_000,
        description="Most samples waiting per model (503 when full; 413 for larger requests).",
    )
    max_request_bytes: int = Field(
        DEFAULTS["max_request_bytes"],
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body in bytes (413 beyond it), enforced while reading.",
    )
    request_timeout_s: float = Field(
        DEFAULTS["request_timeout_s"],
        gt=0.0,
        le=3600.0,
        description="Longest a request waits for its scores (then 503).",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        DEFAULTS["api_keys"],
        description="Comma-separated API keys; when set, /v1/* needs one as "
        "'Authorization: Bearer KEY' or 'X-API-Key: KEY'.",
    )
    api_keys_file: Path | None = Field(
        DEFAULTS["api_keys_file"],
        description="File of API keys, one a line ('#' comments); re-read when it changes and "
        "on SIGHUP, so keys rotate without a restart. Its keys add to api_keys.",
    )
    shutdown_drain_s: float = Field(
        DEFAULTS["shutdown_drain_s"],
        ge=0.0,
        le=600.0,
        description="On SIGTERM, how long /readyz answers 503 while requests are still served "
        "(load balancers stop sending), before the listening socket closes.",
    )
    shutdown_grace_s: float = Field(
        DEFAULTS["shutdown_grace_s"],
        gt=0.0,
        le=3600.0,
        description="After the socket closes, how long accepted requests may take to finish "
        "before they are cancelled and the process exits.",
    )
    repository_poll_s: float = Field(
        DEFAULTS["repository_poll_s"],
        ge=0.0,
        le=86400.0,
        description="Every so many seconds, reload models that were added, changed or removed "
        "in the repository (0: only on SIGHUP or POST /v1/admin/reload).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        DEFAULTS["log_level"], description="Level of the JSON log lines."
    )
    host: str = Field(DEFAULTS["host"], min_length=1, description="Address to bind.")
    port: int = Field(
        DEFAULTS["port"],
        ge=0,
        le=65535,
        description="Port to bind (0: any free port, named in the log).",
    )
    workers: int = Field(
        DEFAULTS["workers"],
        ge=1,
        le=256,
        description="Serving processes on the one port, each loading every model (reference "
        "pages shared) and batching its own traffic; about one per core (docs/scaling.md).",
    )
    scoring_threads: int = Field(
        DEFAULTS["scoring_threads"],
        ge=1,
        le=256,
        description="Intra-op threads of each model's scoring worker (keep the event loop fed).",
    )
    warmup_iterations: int = Field(
        DEFAULTS["warmup_iterations"],
        ge=1,
        le=100_000,
        description="Full-size scoring calls per model before /readyz turns 200.",
    )

    shards: int = Field(
        DEFAULTS["shards"],
        ge=0,
        le=4096,
        description="Split every model's reference rows over this many Ray actors (0: keep them "
        "in this process); scores are the same.",
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        DEFAULTS["compute_dtype"],
        description="Dtype of the reference products: float32 (exact to float32 rounding), or "
        "bfloat16 / float16 (faster on hardware that has them; p-values move by up to 0.07 / "
        "0.015, docs/performance.md).",
    )
    ray_address: str | None = Field(
        DEFAULTS["ray_address"],
        min_length=1,
        description="Ray cluster of the shards: 'auto', 'ray://HOST:10001' or HOST:PORT (unset: a "
        "private local cluster, or RAY_ADDRESS); used only with shards.",
    )

    gzip_min_bytes: int = Field(
        DEFAULTS["gzip_min_bytes"],
        ge=0,
        le=1024 * 1024 * 1024,
        description="Responses of at least this many bytes are gzip-compressed for clients that "
        "send 'Accept-Encoding: gzip'.",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULTS["cors_origins"],
        description="Comma-separated origins browsers may call the API from ('*': any); "
        "empty (default): no CORS headers.",
    )

    drift_enabled: bool = Field(
        DEFAULTS["drift_enabled"],
        description="Run a drift monitor per model over the served p-values (docs/drift.md).",
    )
    drift_ert: float = Field(
        DEFAULTS["drift_ert"],
        description="Drift monitor: expected samples between false alarms on in-distribution "
        "traffic, per replica (at least 10000).",
    )
    drift_calibration_risk: float = Field(
        DEFAULTS["drift_calibration_risk"],
        description="Drift monitor: probability that the calibration set is too unlucky for the "
        "false-alarm guarantee, in (0, 0.1].",
    )
    drift_levels: Annotated[tuple[float, ...], NoDecode] = Field(
        DEFAULTS["drift_levels"],
        description="Drift monitor: comma-separated p-value levels watched, increasing, in "
        "(0, 0.5].",
    )
    drift_shifts: Annotated[tuple[float, ...], NoDecode] = Field(
        DEFAULTS["drift_shifts"],
        description="Drift monitor: comma-separated contamination shares the bets are tuned for, "
        "increasing, in (0, 1).",
    )

    @field_validator("api_keys", "cors_origins", "drift_levels", "drift_shifts", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """``"k1,k2"`` -> ``("k1", "k2")``; blanks around items are dropped."""
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """Refuse guessable keys and keys with whitespace or commas."""
        for key in keys:
            check_key_strength(key.get_secret_value())
        return keys

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_is_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{str(path)!r} is not a file")
        return path

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("model_repository")
    @classmethod
    def _repository_is_dir(cls, path: Path) -> Path:
        if not path.is_dir():
            raise ValueError(f"{str(path)!r} is not a directory")
        return path

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.max_queue < self.max_batch_size:
            raise ValueError(
                f"max_queue ({self.max_queue}) must be at least max_batch_size "
                f"({self.max_batch_size})"
            )
        return self

    @field_validator("drift_ert", "drift_calibration_risk", "drift_levels", "drift_shifts")
    @classmethod
    def _safe_drift(cls, value: Any, info: ValidationInfo) -> Any:
        """Each drift setting checked by ``DriftSettings`` itself (the others at their defaults):
        an unsafe value is refused naming its variable."""
        name = str(info.field_name)
        field = name.removeprefix("drift_")
        try:
            DriftSettings(**{field: value})
        except InputError as err:
            raise ValueError(
                f"{setting_env(name)}: {str(err).removeprefix(field + ': ')}"
            ) from None
        return value

    @cached_property
    def drift(self) -> DriftSettings:
        """The drift monitor's settings (``snnl.monitoring.DriftSettings``)."""
        return DriftSettings(
            ert=self.drift_ert,
            calibration_risk=self.drift_calibration_risk,
            levels=self.drift_levels,
            shifts=self.drift_shifts,
        )

    @model_validator(mode="after")
    def _workers_without_shards(self) -> Settings:
        if self.workers > 1 and self.shards:
            raise ValueError(
                "workers > 1 with shards would start every worker's own shard actors: "
                "use one worker with shards, or replicas"
            )
        return self

    @property
    def max_batch_wait_s(self) -> float:
        """``max_batch_wait_ms`` in seconds."""
        return self.max_batch_wait_ms / 1000.0

    def api_key_bytes(self) -> tuple[bytes, ...]:
        """The configured keys as bytes, for constant-time comparison."""
        return tuple(key.get_secret_value().encode() for key in self.api_keys)


def check_key_strength(secret: str) -> None:
    """ValueError (that never quotes the key) for a guessable or ill-formed API key."""
    if len(secret) < MIN_API_KEY_LENGTH:
        raise ValueError(f"each API key needs at least {MIN_API_KEY_LENGTH} characters")
    if (
        any(ch.isspace() or ch == "," for ch in secret)
        or not secret.isprintable()
        or not secret.isascii()  # HTTP headers arrive as latin-1: compare ASCII only
    ):
        raise ValueError(
            "API keys may not contain whitespace, commas, control or non-ASCII characters"
        )


def setting_flag(name: str) -> str:
    """The ``snnl serve`` flag of a setting: ``max_queue`` -> ``--max-queue``."""
    return "--repository" if name == "model_repository" else "--" + name.replace("_", "-")


def setting_env(name: str) -> str:
    """The environment variable of a setting: ``max_queue`` -> ``SNNL_MAX_QUEUE``."""
    return "SNNL_" + name.upper()
