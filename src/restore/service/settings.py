"""All configuration, validated once at start-up from ``RESTORE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from restore.core.tiling import DEFAULT_FEATHER, DEFAULT_TILE
from restore.service.types import Device

#: The checkout's models/onnx (this file is src/restore/service/settings.py); an installed copy sets RESTORE_MODELS_DIR.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[3] / "models" / "onnx"


class Settings(BaseSettings):
    """Frozen: nothing in the process may change configuration after start-up."""

    model_config = SettingsConfigDict(env_prefix="RESTORE_", frozen=True, extra="ignore")

    device: Device = Field("auto", description="auto: CUDA when ORT has it and a GPU is visible, else CPU.")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="Folder holding manifest.json and the ONNX files.")
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated model names to load; empty loads every manifest entry marked default."
    )
    tile_size: int = Field(
        DEFAULT_TILE, ge=32, le=4096,
        description="Tile side in pixels (rounded down to the model's multiple); bounds per-batch memory.",
    )
    tile_overlap: int = Field(
        DEFAULT_FEATHER, ge=1, le=512,
        description="Cross-fade width between neighbouring tiles, added to twice the model's receptive-field margin; a model whose manifest entry measured a wider one (`feather`) gets that.",
    )
    max_batch: int = Field(
        0, ge=0, le=256,
        description="Most tiles in one inference batch; 0 = 8 on CUDA, 1 on CPU (where batching buys no speed).",
    )
    precision: Literal["auto", "float32", "int8"] = Field(
        "auto",
        description="auto: a model's int8 variant (manifest) on a CPU with an 8-bit dot product (VNNI, AMX, Arm SDOT), float32 elsewhere and on CUDA; int8: the variant wherever one exists (on an x86 CPU without VNNI or AMX with ONNX Runtime's exact, slower u8 x u8 kernels); float32: never.",
    )
    batch_buckets: bool = Field(
        True,
        description="When batches mix requests (RESTORE_MAX_BATCH > 1), pad images smaller than a tile up to the 64 px grid (reflect; output cropped) so different sizes share batches; false keeps each at its own size, identical to whole-image inference at its bottom and right borders.",
    )
    max_batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="How long a partial batch waits for more tiles.")
    batch_seconds: float = Field(
        0.5, ge=0, le=60,
        description="Target time of one inference batch: each model's tiles are sized at load to take about this long at its measured speed (never under 4x its overlap nor its manifest `min_tile`, never over RESTORE_TILE_SIZE); 0 = always RESTORE_TILE_SIZE.",
    )
    max_queue_seconds: float = Field(
        60.0, gt=0,
        description="Most estimated seconds of work due before a request on its model; beyond it 503 with Retry-After, before the image is decoded.",
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_pixels: int = Field(100_000_000, ge=1, description="Largest image (width x height), checked before decoding.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated bearer tokens; when set, model endpoints require one."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level written (JSON lines on stderr): debug, info, warning or error."
    )
    intra_op_threads: int = Field(0, ge=0, description="ORT intra-op threads; 0 = the CPUs this process may use.")
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC", description="EXHAUSTIVE benchmarks every new tile shape; HEURISTIC avoids first-request stalls."
    )
    warmup_size: int = Field(64, ge=1, le=4096, description="Side of the warm-up tile each model runs before ready.")
    retry_after_s: int = Field(
        1, ge=1, description="Retry-After sent with 503 when a budget is spent (a full queue sends its own estimate, at least this)."
    )
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024, ge=1024,
        description="Most request-body bytes held by all requests together (a declared Content-Length is held from the headers on); beyond it 503 with Retry-After.",
    )
    max_pixels_in_flight: int = Field(
        200_000_000, ge=1,
        description="Most decoded pixels held by all requests and unfinished jobs together, from decoding to the sent response or the job's end; beyond it 503 with Retry-After. Bounds memory: about 35 bytes per RGB pixel at peak.",
    )
    client_budget_share: float = Field(
        0.5, gt=0, le=1,
        description="Fraction of RESTORE_MAX_BODY_BYTES_IN_FLIGHT and of RESTORE_MAX_PIXELS_IN_FLIGHT one client (API key; address without keys) may hold, its jobs included: beyond it 503, and a request that alone needs more is 413. Keep RESTORE_MAX_PIXELS within this share of the pixel budget.",
    )
    cpu_mem_arena: bool = Field(
        False,
        description="Keep ONNX Runtime's CPU memory arena between batches. Off, the arena is shrunk after every batch and its activations go back to the system; on, each model keeps its largest batch's memory for good.",
    )
    load_retry_s: float = Field(
        5.0, gt=0, le=3600, description="Wait before retrying a model that failed to load; doubles after each failure."
    )
    load_retry_max_s: float = Field(300.0, gt=0, le=86400, description="Longest wait between two load attempts of a model.")
    required_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated models that must be ready for /readyz to answer 200; empty = every loaded model. The others are retried in the background.",
    )
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG output quality (always 4:4:4 chroma).")
    webp_quality: int = Field(95, ge=1, le=100, description="WebP output quality.")
    png_compress_level: int = Field(
        3, ge=0, le=9, description="zlib level for 8-bit PNG output: 3 encodes about twice as fast as 6 for ~10% larger files."
    )
    keep_metadata: bool = Field(
        True, description="Copy the input's EXIF (orientation reset to 1) to outputs whose format carries it; false strips it."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600,
        description="Longest wait for a request line and headers, counted from a new connection or the first byte of the next request.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="Longest silence while a request body is read, and the grace period before RESTORE_MIN_UPLOAD_RATE applies; then 408 and the connection closes.",
    )
    min_upload_rate: int = Field(
        65536, ge=1,
        description="Bytes per second a request body must average, counted from its headers, once RESTORE_BODY_TIMEOUT_S has passed: a body of N bytes gets RESTORE_BODY_TIMEOUT_S + N / this; slower is 408 and the connection closes.",
    )
    keep_alive_s: float = Field(5.0, gt=0, le=3600, description="Idle time after a response before a keep-alive connection is closed.")
    max_header_bytes: int = Field(65536, ge=4096, description="Largest request line plus headers; beyond it 431.")
    max_connections: int = Field(
        256, ge=1,
        description="Most open connections for model requests; past it, RESTORE_OPERATIONS_CONNECTIONS more are let in for /healthz, /readyz and /metrics only (anything else 503), and one beyond those is answered 503 with Retry-After and closed.",
    )
    operations_connections: int = Field(
        16, ge=0, le=1024,
        description="Connections kept, past RESTORE_MAX_CONNECTIONS, for health checks and metrics, so a saturated server still answers its orchestrator.",
    )
    max_connections_per_client: int = Field(
        32, ge=1, description="Most open connections from one client address; one more is answered 503 with Retry-After and closed."
    )
    max_requests: int = Field(
        64, ge=1,
        description="Most model requests past their upload (decoding, queued or running); a request takes its slot once its whole body is in, so slow uploads hold none; beyond it 503 with Retry-After. Operations endpoints do not count.",
    )
    max_requests_per_client: int = Field(
        16, ge=1,
        description="Most model requests open at once from one client address, uploads included; beyond it 503 with Retry-After before the body is read.",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated proxy addresses (or *) trusted to name the client in X-Forwarded-For: per-client limits count the named client instead of the proxy. Empty trusts none.",
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, le=3600,
        description="On SIGTERM, how long in-flight requests may finish before they are cancelled and the process exits.",
    )
    jobs_dir: Path | None = Field(
        None,
        description="Folder for job results, used by this process alone; empty = a new temporary folder, removed at exit. Result files left by an earlier run are deleted at start (jobs do not survive a restart).",
    )
    jobs_max_count: int = Field(
        100, ge=1, le=1_000_000,
        description="Most jobs kept at once, queued, running or finished, all clients together; to make room the oldest finished job of the client with the most jobs is dropped (410), and when none is finished a new job gets 503 with Retry-After.",
    )
    jobs_max_count_per_client: int = Field(
        16, ge=1, le=1_000_000,
        description="Most jobs one client (API key; address without keys) keeps at once; its own oldest finished job is dropped (410) to make room, and when none is finished its new job gets 503.",
    )
    jobs_max_bytes: int = Field(
        1024**3, ge=1024,
        description="Most bytes of job results on disk, all clients together; to make room the oldest result of the client with the most bytes is dropped (410), and a result larger than RESTORE_JOBS_MAX_BYTES_PER_CLIENT fails its job (507).",
    )
    jobs_max_bytes_per_client: int = Field(
        256 * 1024**2, ge=1024,
        description="Most bytes of job results one client keeps; its own oldest results are dropped (410) to make room.",
    )
    jobs_ttl_s: float = Field(
        3600.0, gt=0, le=7 * 86400, description="How long a finished job and its result are kept; then they are deleted (410)."
    )

    # Ray Serve only (restore.service.ray_serve): how each replica is reserved and how many run. `make run`
    # and the Docker image ignore them.
    serve_num_cpus: float = Field(
        1.0, gt=0, le=1024,
        description="Ray Serve: CPUs reserved per replica; with RESTORE_INTRA_OP_THREADS=0 its ONNX Runtime threads follow this share (at least 1).",
    )
    serve_num_gpus: float | None = Field(
        None, ge=0, le=64,
        description="Ray Serve: GPUs per replica, fractions allowed (0.5: two replicas share a GPU); empty = 1 when RESTORE_DEVICE=cuda or the Ray cluster has GPUs (auto), else 0.",
    )
    serve_min_replicas: int = Field(1, ge=0, le=1024, description="Ray Serve: fewest replicas; equal to RESTORE_SERVE_MAX_REPLICAS turns autoscaling off.")
    serve_max_replicas: int = Field(1, ge=1, le=1024, description="Ray Serve: most replicas the autoscaler starts.")
    serve_target_ongoing_requests: float = Field(
        2.0, gt=0, le=1024,
        description="Ray Serve: the autoscaler adds replicas when the requests in flight per replica (queued in the app included) stay above this, and removes them below it.",
    )
    serve_max_queued_requests: int = Field(
        16, ge=0, le=100_000,
        description="Ray Serve: requests each proxy holds while every replica is full; beyond it Serve answers 503 with Retry-After.",
    )
    serve_ready_timeout_s: float = Field(
        600.0, gt=0, le=86400,
        description="Ray Serve: how long a new replica may take to load its required models; past it the replica fails to start and Serve replaces it.",
    )

    @field_validator("jobs_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("models", "api_keys", "required_models", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _replica_bounds(self) -> Settings:
        if self.serve_min_replicas > self.serve_max_replicas:
            raise ValueError(f"RESTORE_SERVE_MIN_REPLICAS ({self.serve_min_replicas}) exceeds RESTORE_SERVE_MAX_REPLICAS ({self.serve_max_replicas})")
        return self

    def batch_limit(self, provider: str) -> int:
        """The batch size to use on ``provider`` (resolves max_batch=0)."""
        if self.max_batch:
            return self.max_batch
        return 8 if provider == "CUDAExecutionProvider" else 1
