"""All configuration, validated once at start-up from ``RESTORE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.types import Device

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models" / "onnx"


class Settings(BaseSettings):
    """Frozen: nothing in the process may change configuration after start-up."""

    model_config = SettingsConfigDict(env_prefix="RESTORE_", frozen=True, extra="ignore")

    device: Device = Field("auto", description="auto: CUDA when ORT has it and a GPU is visible, else CPU.")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="Folder holding manifest.json and the ONNX files.")
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated model names to load; empty loads every manifest entry marked default."
    )
    tile_size: int = Field(
        1024, ge=32, le=4096,
        description="Tile side in pixels (rounded down to the model's multiple); bounds per-batch memory.",
    )
    tile_overlap: int = Field(
        16, ge=1, le=512,
        description="Cross-fade width between neighbouring tiles, added to twice the model's receptive-field margin.",
    )
    max_batch: int = Field(
        0, ge=0, le=256,
        description="Most tiles in one inference batch; 0 = 8 on CUDA, 1 on CPU (where batching buys no speed).",
    )
    max_batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="How long a partial batch waits for more tiles.")
    max_queue: int = Field(2048, ge=1, description="Most tiles waiting per model; beyond it requests get 503.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_pixels: int = Field(100_000_000, ge=1, description="Largest image (width x height), checked before decoding.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated bearer tokens; when set, model endpoints require one."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    intra_op_threads: int = Field(0, ge=0, description="ORT intra-op threads; 0 = the CPUs this process may use.")
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC", description="EXHAUSTIVE benchmarks every new tile shape; HEURISTIC avoids first-request stalls."
    )
    warmup_size: int = Field(64, ge=1, le=4096, description="Side of the warm-up tile each model runs before ready.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 when a queue is full.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG output quality (always 4:4:4 chroma).")
    webp_quality: int = Field(95, ge=1, le=100, description="WebP output quality.")
    png_compress_level: int = Field(
        3, ge=0, le=9, description="zlib level for 8-bit PNG output: 3 encodes about twice as fast as 6 for ~10% larger files."
    )

    @field_validator("models", "api_keys", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def batch_limit(self, provider: str) -> int:
        """The batch size to use on ``provider`` (resolves max_batch=0)."""
        if self.max_batch:
            return self.max_batch
        return 8 if provider == "CUDAExecutionProvider" else 1
