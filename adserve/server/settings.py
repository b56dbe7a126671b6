"""Server settings: one pydantic-settings class read from `ADSERVE_*` variables.

Command-line flags override the environment (see `cli.py`); every field is
documented in the README's settings table.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1 << 20


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "adserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADSERVE_", extra="ignore")

    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535, description="0 leaves gRPC off")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="compiled code lives here")
    compile: bool = Field(True, description="compile plans with numba in the background (false: interpreter only)")
    redis_url: str | None = Field(None, description="shared registry and result cache; unset: both in memory")
    redis_timeout_seconds: float = Field(0.25, gt=0, description="per Redis call; a failure opens the breaker")
    redis_result_ttl_seconds: int = Field(3600, ge=0, description="results kept in Redis; 0 keeps none there")
    redis_result_max_bytes: int = Field(8 * MiB, ge=0, description="larger results stay local")
    max_body_bytes: int = Field(16 * MiB, gt=0)
    result_cache_bytes: int = Field(256 * MiB, ge=0, description="0 turns the result cache off")
    shutdown_grace_seconds: float = Field(10, ge=0, description="on SIGTERM, time to drain requests in flight")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                     description="comma-separated; not enforced yet")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v):
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v
