"""Configuration: defaults < config file < ``CLIPSORT_*`` environment < CLI flags.

The file is the one given by ``--config``, else ``./config.toml``, else
``/etc/clipsort/config.toml``; none at all is fine (defaults apply). Every
model forbids unknown keys so a typo is an error, not a silently ignored
option. Validation errors are mapped to :class:`ConfigError` naming the key
and the offending value.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import textwrap
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

from PIL import Image
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from clipsort import imageplugins
from clipsort.errors import ConfigError

Mode = Literal["reference", "text", "mixed", "finetuned"]
Auto = Literal["auto"]
Aggregate = Literal["max", "avg"]
Action = Literal["move", "copy"]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
# A share the unknown gate may hold back: neither none (no threshold at all) nor most of a class.
HeldShare = Annotated[float, Field(gt=0.0, le=0.5)]
# unknown_held = "auto" per kind of mode. Measured on the handwritten digits (docs: the gate's method):
# the CLIP modes also hold the in-class pictures they would misclassify, so they hold about 0.04 more
# than asked, and 0.05 keeps >= 0.80 of strangers out with <= 0.10 held across four trainings of
# the test model; a checkpoint's gate holds about what is asked and needs 0.07 for 0.80 kept out.
AUTO_HELD = {"clip": 0.05, "finetuned": 0.07}

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
)
SYSTEM_CONFIG = Path("/etc/clipsort/config.toml")
# What `clipsort eval` compares: each CLIP mode, reference mode with both aggregations.
# Lightroom and darktable (.xmp), Apple Photos edits (.aae), Google Takeout (IMG_1.jpg.json),
# camera thumbnails (.thm).
DEFAULT_SIDECARS = (".xmp", ".aae", ".json", ".thm")
EVALUATED_MODES = ("text", "reference-max", "reference-avg", "mixed")
# `clipsort train`'s default backbone (the original third script's).
DEFAULT_BASE = "google/vit-base-patch16-224-in21k"
# Pillow's names; AVIF comes from Pillow's own plugin, HEIF (phones' HEIC) from pi-heif, RAW from
# rawpy when the raw extra is installed (see imageplugins).
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "HEIF", "RAW", "GIF", "BMP", "TIFF")
# Temporary names of files still being written (and dotfiles): never touched in an inbox.
DEFAULT_IGNORE = (".*", "*.part", "*.partial", "*.tmp", "*.crdownload", "~$*")


def installed(module: str) -> bool:
    """Whether ``module`` can be found for import, without importing it (an optional extra's)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules holds None for it: Python's own way of blocking an import
        return False


def _check_templates(value: list[str] | None) -> list[str] | None:
    if value is None:
        return value
    if not value:
        raise ValueError("needs at least one template")
    for template in value:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain '{{}}' exactly once")
    return value


class DatasetOverrides(BaseModel):
    """Per-dataset values under ``[datasets.<name>]``; unset keys inherit."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode | None = None
    aggregate: Aggregate | None = None
    prompt_templates: list[str] | None = None
    action: Action | None = None
    alpha: NonNegativeFloat | Auto | None = None
    beta: PositiveFloat | Auto | None = None
    min_confidence: Probability | Auto | None = None
    min_margin: Probability | None = None
    unknown_gate: bool | None = None
    unknown_held: HeldShare | Auto | None = None
    descriptions: dict[str, str] = Field(default_factory=dict)

    _templates = field_validator("prompt_templates")(_check_templates)


class DatasetSettings(BaseModel):
    """The options in force for one dataset, overrides applied."""

    model_config = ConfigDict(frozen=True)

    mode: Mode
    aggregate: Aggregate
    prompt_templates: tuple[str, ...]
    action: Action
    alpha: float | Auto
    beta: float | Auto
    min_confidence: float | Auto | None
    min_margin: float | None
    unknown_gate: bool
    unknown_held: float
    auto_keep: float
    descriptions: Mapping[str, str]
    sidecar_suffixes: tuple[str, ...] = DEFAULT_SIDECARS


# Images per forward pass where ``batch_size`` is automatic (0). On a GPU the model takes a big batch
# in about the time of a small one, and each batch costs the host's interpreter a share of its own
# (the batch's futures, messages, journal statements): 256 fed an H200 at 27,700 images/s, and with a
# near-free model cost the daemon about a quarter less CPU per file than 32 (bench/README.md). On
# the CPU the model's time grows with the batch, so a small one keeps a single file's wait short.
GPU_BATCH = 256
CPU_BATCH = 32


def resolve_batch(size: int, device: str) -> int:
    """Images per forward pass for the ``batch_size`` setting ``size`` (0: automatic) on ``device``."""
    if size:
        return size
    return GPU_BATCH if device.startswith("cuda") else CPU_BATCH


class Settings(BaseSettings):
    """Every option clipsort reads; ``config.toml`` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix="CLIPSORT_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    root: Path = Field(
        Path("Data"),
        description="Data root: one folder per dataset, each with Clases/, Images/ and Dataset/.",
    )
    model: str = Field(
        "clip-ViT-B-32",
        description="CLIP model: a sentence-transformers name (downloaded on first use) or a local folder.",
    )
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description=(
            "Image encoding precision. auto: fp16 on CUDA, bf16 on a CPU with AMX or AVX-512 BF16, else "
            "fp32. Measured (bench/README.md, ViT-B/32, 2 AMX cores): bf16 forward 4.7x fp32, with the "
            "same decisions as fp32 on at least 99% of pictures (tested)."
        ),
    )
    batch_size: NonNegativeInt = Field(
        0,
        description=(
            "Images encoded per forward pass. 0 is automatic: 256 when the model runs on a GPU, 32 "
            "elsewhere. Measured (bench/README.md): ViT-B/32 on 2 CPUs 28.6 images/s at 32 against 16.8 "
            "one at a time; 27,700 images/s at 256 on an H200; with a near-free model, 256 cost the "
            "daemon's own interpreter about a quarter less CPU per file than 32."
        ),
    )
    decode_workers: PositiveInt = Field(
        2,
        description=(
            "Threads decoding images while the model runs; about one per CPU core (2 on the measured "
            "2-core machine: 104-108 images/s against 88-102 with one thread, bench/README.md; 16 on "
            "the 16-core GPU machine)."
        ),
    )
    decode_in: Literal["processes", "threads"] = Field(
        "processes",
        description=(
            "Where the CLIP path decodes: worker processes writing the model's input into shared "
            "memory, one message per batch (a worker that dies loses no file), or threads in the "
            "daemon's own interpreter (bench/README.md, overhead mode). Fine-tuned checkpoints "
            "decode in threads."
        ),
    )
    place_in: Literal["process", "thread"] = Field(
        "process",
        description=(
            "Where files are journalled and moved: a process of its own that the placer thread hands "
            "one message a batch (0.10-0.15 ms less CPU per file in the interpreter that classifies, "
            "which caps its rate; bench/README.md, issue 37), or the placer thread itself. Read when "
            "the daemon or `sort` starts; a `sort` of one batch places in the thread (a process's start "
            "would cost more than it saves)."
        ),
    )
    decode_memory_mb: PositiveInt = Field(
        1536,
        description=(
            "Most memory (heap) one decoding process may take: a picture that needs more fails inside "
            "the process with its own error and is rejected with that reason, instead of the kernel's "
            "OOM killer ending the process (which is not the file's fault: it is retried)."
        ),
    )
    jpeg_decoder: Literal["pillow", "torchvision"] = Field(
        "pillow",
        description=(
            "What decodes JPEGs on the CLIP path. pillow: the CPU, as `decode_in` says. torchvision: a "
            "batch at a time on the model's device (nvJPEG on CUDA), resized and cropped there; every "
            "other format, and a JPEG the device refuses, still decodes on the CPU. Needs the "
            "gpu-decode extra (torchvision built for the installed torch). Not the default: it is "
            "made so only where bench/gpu.sh measures it 1.5x faster than the CPU on 12-megapixel "
            "JPEGs at the same core count."
        ),
    )
    ray_actors: NonNegativeInt = Field(
        0,
        description=(
            "`clipsort sort --engine ray`: classifier actors (each holds the model). 0: one per GPU "
            "of the cluster times `ray_actors_per_gpu`, or one on a cluster without GPUs."
        ),
    )
    ray_actors_per_gpu: int = Field(
        1,
        ge=1,
        le=8,
        description="`--engine ray` on GPUs: classifier actors sharing one GPU (more keep a fast GPU fed).",
    )
    ray_decode_cpus: float = Field(
        1.0,
        gt=0,
        le=16,
        description="`--engine ray`: CPUs each decoding task takes; decoding tasks fill a node's other CPUs.",
    )
    ray_shard_files: PositiveInt = Field(
        10_000,
        description=(
            "`--engine ray`: files per manifest and decision shard, the unit a resumed run skips once "
            "its marker is written."
        ),
    )
    decode_ahead: int = Field(
        2,
        ge=1,
        le=8,
        description=(
            "Batches decoded ahead of the one the model classifies. With 1 the decoders wait while "
            "each batch is classified and handed on; 2 keeps them busy (bench/README.md, overhead "
            "mode). Each costs one batch of the model's input in memory."
        ),
    )
    model_threads: NonNegativeInt = Field(
        0,
        description=(
            "CPU threads for the model's own operators, on the thread that runs it. 0 is automatic: "
            "one per core when the model runs on the CPU, 1 when it runs on a GPU, where the GPU does "
            "the work and the cores are the decoders'. Measured on 2 cores with a near-free model and "
            "decoding in processes: 1 thread sorted faster than 2, which spin beside the decoders "
            "(bench/README.md, overhead mode)."
        ),
    )
    compiled_cache: bool = Field(
        True,
        description=(
            "Keep a TorchScript copy of a local plain CLIP folder's model (CPU only) in the user's cache "
            "(systemd's CacheDirectory, else $XDG_CACHE_HOME/clipsort, else ~/.cache/clipsort), so "
            "starts after the first skip importing transformers: about 4.6 s less CPU per start of the "
            "daemon, of `clipsort sort` and of each Ray actor (2 cores). false: load it with "
            "transformers every time."
        ),
    )
    text_model: str | None = Field(
        None,
        description=(
            "A separate text encoder aligned with the image model, e.g. a multilingual one for class "
            "names that are not English; unset means the image model encodes text too."
        ),
        examples=["clip-ViT-B-32-multilingual-v1"],
    )
    mode: Mode = Field(
        "reference",
        description=(
            "reference: similarity to Clases/<class>/ images; text: similarity to the class description; "
            "mixed: both (Tip-Adapter: text logits + alpha * reference-cache affinity); finetuned: the "
            "dataset's current checkpoint from `clipsort train`."
        ),
    )
    aggregate: Aggregate = Field(
        "max", description="Reference mode: max = most similar single reference, avg = mean over a class."
    )
    prompt_templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        description="Text mode: phrasings of a class name ({} is the name); their embeddings are averaged.",
    )
    action: Action = Field("move", description="move the file into Dataset/<class>/, or copy it there.")
    checkpoints_loaded: PositiveInt = Field(
        2, description="Finetuned mode: most fine-tuned checkpoints kept in memory at once (least recent go)."
    )
    alpha: NonNegativeFloat | Auto = Field(
        "auto",
        description=(
            "Mixed mode: weight of the reference images against the text; auto = chosen per dataset by "
            "leave-one-out over the reference images whenever the classes change."
        ),
    )
    beta: PositiveFloat | Auto = Field(
        "auto",
        description="Mixed mode: sharpness of the reference affinity exp(-beta * (1 - cos)); auto as alpha.",
    )
    min_confidence: Probability | Auto | None = Field(
        None,
        description=(
            "Files whose best class has a lower probability go to Review/ instead; auto = the value that "
            "keeps auto_keep of the correctly classified reference images (leave-one-out). Off when unset."
        ),
        examples=["auto"],
    )
    min_margin: Probability | None = Field(
        None,
        description="Files whose two best classes' probabilities differ less go to Review/; off when unset.",
        examples=[0.1],
    )
    unknown_gate: bool = Field(
        True,
        description=(
            'The "none of these" gate: a picture unlike every class (by its nearest reference plus its '
            "class description, or, without references, words far from every class name) goes to "
            "Review/ with reason unknown. Calibrated per dataset from the references, in every mode "
            "(docs: the gate's method); pictures in Clases/_none/ count as none of these. false files "
            "every picture in some class, as the original scripts did."
        ),
    )
    unknown_held: HeldShare | Auto = Field(
        "auto",
        description=(
            "The unknown gate's knob: the share of a class's own pictures it may hold back as unknown "
            "to keep strangers out. Higher keeps more strangers out and holds more of the class's "
            "pictures; `clipsort eval` prints both at a few values. Pictures a mode misclassifies are "
            "often held too, so Review/ sees somewhat more than this share. auto: "
            f"{AUTO_HELD['clip']:g} in the CLIP modes, {AUTO_HELD['finetuned']:g} in finetuned, whose "
            "checkpoint-calibrated gate holds about the share asked (docs: the gate's method)."
        ),
        examples=[0.1],
    )
    auto_keep: Probability = Field(
        0.95,
        description=(
            "min_confidence = auto keeps this share of the correctly classified reference images "
            "(leave-one-out)."
        ),
    )
    correction_weight: PositiveFloat = Field(
        1.0,
        description=(
            "Reference and mixed modes: how much a corrected example (a sorted file a person moved to "
            "another class folder) counts against one reference image in its class's average."
        ),
    )
    max_corrections_per_class: PositiveInt = Field(
        50, description="Only the newest this many corrected examples of each class are used."
    )
    learn_from_dataset: bool = Field(
        False,
        description=(
            "Daemon: files a person puts straight into Dataset/<class>/ (never sorted by clipsort) also "
            "become corrected examples; off means only moves of files clipsort sorted teach it."
        ),
    )
    max_pixels: PositiveInt = Field(
        89_478_485,
        description="Larger images are refused unread (a decompression-bomb guard; at most Pillow's limit).",
    )
    max_file_mb: PositiveFloat = Field(
        200.0, description="Larger files are refused unread and go to Rejected/ (MiB)."
    )
    decode_timeout_seconds: PositiveFloat = Field(
        30.0, description="Daemon: a file whose decoding takes longer goes to Rejected/."
    )
    image_formats: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IMAGE_FORMATS),
        description=(
            "Pillow formats that may be decoded; anything else goes to Rejected/. Animated and "
            "multi-page files (GIF, WebP, TIFF) are read by their first frame. RAW (camera raw "
            "files, by their embedded preview) needs the raw extra: pip install 'clipsort[raw]'."
        ),
    )
    ignore_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_IGNORE),
        description="Inbox names never touched (temporary names of files still being written).",
    )
    max_folder_depth: PositiveInt = Field(
        32,
        description=(
            "Folders below an inbox that are looked into; a deeper one is left alone and logged once "
            "(a chain of a thousand nested folders must not stop the daemon)."
        ),
    )
    sidecar_suffixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SIDECARS),
        description=(
            "Sidecar files (edits, metadata) travel with their picture into the same folder: a file named "
            "like a picture with one of these suffixes (IMG_1.xmp or IMG_1.jpg.xmp beside IMG_1.jpg; case "
            "does not matter). One whose picture never comes stays in the inbox."
        ),
    )
    state_dir: Path | None = Field(
        None,
        description="Caches, status file and journal; unset means <root>/.clipsort.",
        examples=["/var/lib/clipsort"],
    )
    settle_seconds: NonNegativeFloat = Field(
        0.5, description="Daemon: a file is read only once its size and mtime held still this long."
    )
    max_wait_seconds: PositiveFloat = Field(
        120.0,
        description="Daemon: an empty or truncated image is awaited this long before going to Rejected/.",
    )
    max_batch_delay_ms: NonNegativeInt = Field(
        0,
        description=(
            "Daemon: how long a batch waits for more files after the first. Measured (bench/README.md, "
            "ViT-B/32, 2 CPUs): 0 ms gave single-file p50 173 ms vs 201 ms at 25 and 283 ms at 100, "
            "with the same burst rate, since files queue up while the model runs anyway."
        ),
    )
    queue_capacity: PositiveInt = Field(
        4096,
        description="Daemon: most inbox files held in memory at once; beyond it, rescans pick them up.",
    )
    rescan_seconds: PositiveFloat = Field(
        300.0, description="Daemon: full inbox rescan period (with 10% jitter), the net for missed events."
    )
    observer: Literal["native", "polling"] = Field(
        "native",
        description="Daemon: native = inotify; polling for network file systems inotify cannot see.",
    )
    polling_seconds: PositiveFloat = Field(1.0, description="Daemon: polling observer interval.")
    busy_events_per_second: NonNegativeInt = Field(
        200,
        description=(
            "Daemon: an inbox that receives more file events than this in a second is listed instead of "
            "watched until it is quiet (a second with nothing new): a burst costs ten listings a "
            "second, not one event per file. A Dataset/ folder that does (the placer filling it) is "
            "not watched until its class folders are still for a second, then what changed meanwhile "
            "is looked at for corrections. 0 watches both always."
        ),
    )
    class_debounce_seconds: NonNegativeFloat = Field(
        1.0, description="Daemon: quiet time after a change under Clases/ before the classes are reloaded."
    )
    shutdown_seconds: PositiveFloat = Field(
        10.0, description="Daemon: on SIGTERM, how long the in-flight batch may take to finish."
    )
    status_seconds: PositiveFloat = Field(2.0, description="Daemon: how often the status file is rewritten.")
    vector_retention_days: PositiveFloat = Field(
        30.0,
        description=(
            "Daemon: cached vectors and file hashes unused this long are deleted. A correction made "
            "later re-encodes its file; references in use are used again at every class rebuild."
        ),
    )
    journal_retention_days: PositiveFloat = Field(
        365.0,
        description=(
            "Daemon: concluded journal entries older than this are deleted (corrected ones are kept); "
            "history, undo and learning from hand moves reach back this far."
        ),
    )
    housekeeping_seconds: PositiveFloat = Field(
        3600.0, description="Daemon: how often the state is pruned to the retention windows (and at start)."
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Daemon: serve Prometheus metrics on this port (off when unset).",
        examples=[9464],
    )
    metrics_address: str = Field("127.0.0.1", description="Daemon: address the metrics endpoint binds.")
    web_host: str = Field(
        "127.0.0.1",
        description="clipsort web: the address the review page binds; beyond loopback it needs web_token.",
    )
    web_port: int = Field(8765, ge=1, le=65535, description="clipsort web: the review page's port.")
    web_token: str | None = Field(
        None,
        description=(
            "clipsort web: the token the page asks for once (then kept in a cookie); required to bind "
            "an address other than loopback. Keep the config file private when it is set."
        ),
    )
    web_allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "clipsort web: names the page may be reached by besides its bound address and loopback "
            "(photos.lan, or photos.lan:443 behind a proxy); any other Host header is refused."
        ),
    )
    web_session_hours: PositiveFloat = Field(
        12.0, description="clipsort web: a sign-in with web_token lasts this long (and ends with a restart)."
    )
    web_thumbnail_cache_mb: PositiveFloat = Field(
        64.0, description="clipsort web: most megabytes of thumbnails kept in the state folder."
    )
    web_decode_seconds: PositiveFloat = Field(
        5.0, description="clipsort web: a thumbnail that takes longer to decode is not shown."
    )
    log_format: Literal["auto", "console", "json"] = Field(
        "auto", description="auto = readable on a terminal, JSON lines otherwise (journald)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level logged."
    )
    datasets: dict[str, DatasetOverrides] = Field(
        default_factory=dict,
        description=(
            "Per-dataset overrides of mode, aggregate, prompt_templates, action, alpha, beta, "
            "min_confidence, min_margin and unknown_gate, plus descriptions: class name -> text "
            "describing it."
        ),
    )

    _templates = field_validator("prompt_templates")(_check_templates)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head in ("auto", "cpu", "mps") and not index:
            return value
        if head == "cuda" and (not index or index.isdigit()):
            return value
        raise ValueError("must be auto, cpu, mps, cuda or cuda:N")

    @field_validator("jpeg_decoder")
    @classmethod
    def _check_jpeg_decoder(cls, value: str) -> str:
        # Found, not imported: importing it loads torch, which the settings never do.
        if value == "torchvision" and not installed("torchvision"):
            raise ValueError("torchvision is not installed: pip install 'clipsort[gpu-decode]'")
        return value

    @field_validator("sidecar_suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        bad = [suffix for suffix in value if not suffix.startswith(".") or len(suffix) < 2 or "/" in suffix]
        if bad:
            raise ValueError(f"a suffix starts with a dot, as .xmp does (not {', '.join(map(repr, bad))})")
        return [suffix.lower() for suffix in value]

    @field_validator("image_formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        imageplugins.register()
        Image.init()  # registers every Pillow plugin, so OPEN lists them all
        names = [name.upper() for name in value]
        unknown = [name for name in names if name not in Image.OPEN and name not in imageplugins.OWN_FORMATS]
        if unknown:
            raise ValueError(f"unknown Pillow format(s) {', '.join(unknown)}")
        return names

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: flags (init kwargs) > environment > TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def state_path(self) -> Path:
        """Where caches and the status file live."""
        return self.state_dir if self.state_dir is not None else self.root / ".clipsort"

    def for_dataset(self, name: str) -> DatasetSettings:
        """The options for dataset ``name``, its ``[datasets.<name>]`` table applied."""
        own = self.datasets.get(name, DatasetOverrides())
        return DatasetSettings(
            mode=own.mode or self.mode,
            aggregate=own.aggregate or self.aggregate,
            prompt_templates=tuple(own.prompt_templates or self.prompt_templates),
            action=own.action or self.action,
            alpha=own.alpha if own.alpha is not None else self.alpha,
            beta=own.beta if own.beta is not None else self.beta,
            min_confidence=own.min_confidence if own.min_confidence is not None else self.min_confidence,
            min_margin=own.min_margin if own.min_margin is not None else self.min_margin,
            unknown_gate=own.unknown_gate if own.unknown_gate is not None else self.unknown_gate,
            unknown_held=held_share(
                own.unknown_held if own.unknown_held is not None else self.unknown_held, own.mode or self.mode
            ),
            auto_keep=self.auto_keep,
            descriptions=own.descriptions,
            sidecar_suffixes=tuple(self.sidecar_suffixes),
        )


def held_share(setting: float | Auto, mode: str) -> float:
    """``unknown_held`` as a number: ``auto`` is :data:`AUTO_HELD` for ``mode``'s kind."""
    if setting != "auto":
        return float(setting)
    return AUTO_HELD["finetuned" if mode == "finetuned" else "clip"]


S = TypeVar("S")


class Mailbox(Generic[S]):
    r"""Settings handed from the thread that reloads them to the one thread that owns a component.

    A component's thread reads :attr:`current` throughout a round of its work and calls
    :meth:`take` only at its defined point (the intake at each tick, the worker between batches,
    the learner between rounds), so a round never sees two configurations. The reloading thread
    only :meth:`post`\ s: it never assigns to a component another thread is reading.
    """

    def __init__(self, current: S) -> None:
        self.current = current
        self._lock = threading.Lock()
        self._posted: S | None = None

    def post(self, value: S) -> None:
        """Hand over ``value``; a later post before the owner looks replaces it."""
        with self._lock:
            self._posted = value

    def take(self) -> S | None:
        """On the owner's thread: the value posted since the last look (now :attr:`current`), or None."""
        with self._lock:
            posted, self._posted = self._posted, None
        if posted is not None:
            self.current = posted
        return posted


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value).replace("_", "")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def render_config_toml() -> str:
    """The commented config file: every option, its meaning and its default."""
    lines = [
        "# clipsort configuration. Every option is shown commented out at its default.",
        "# Precedence: command-line flags > CLIPSORT_* environment (nested keys joined",
        "# with __, e.g. CLIPSORT_DATASETS__SHOES__MODE=text) > this file > defaults.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        if name == "datasets":
            continue
        default = info.get_default(call_default_factory=True)
        lines += [f"# {line}" for line in textwrap.wrap(info.description or "", 98)]
        if default is None and info.examples:
            lines.append(f"# {name} = {_toml_value(info.examples[0])}  (unset by default)")
        else:
            lines.append(f"# {name} = {_toml_value(default)}")
        lines.append("")
    lines += [
        f"# {Settings.model_fields['datasets'].description}",
        "# [datasets.example]",
        '# mode = "mixed"',
        '# min_confidence = "auto"',
        "# [datasets.example.descriptions]",
        '# vestido = "a dress"',
        "",
    ]
    return "\n".join(lines)


def find_config_file(explicit: Path | None) -> Path | None:
    """The config file in force: ``--config``, else ./config.toml, else /etc."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {str(explicit)!r} does not exist or is not a file")
        return explicit
    for candidate in (Path("config.toml"), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_settings(config_file: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build the settings from every source, or raise :class:`ConfigError`.

    ``overrides`` are the CLI flags; ``None`` values mean "flag not given".
    """
    path = find_config_file(config_file)
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}
    # pydantic-settings reads the TOML path from the class's model_config, so
    # the file chosen at run time is bound through a throwaway subclass.
    bound = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    try:
        settings: Settings = bound(**flags)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except SettingsError as exc:  # e.g. CLIPSORT_DATASETS that is not JSON
        raise ConfigError(f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path)) from None
    # A flag is the most specific thing a user can say: it beats the
    # per-dataset tables too, not only the global key.
    datasets = {
        name: own.model_copy(update=dict.fromkeys(flags.keys() & own.model_fields_set))
        for name, own in settings.datasets.items()
    }
    # Absolute from here on: the journal records paths under the root, and a path recorded from
    # `--root Data` would not be found again from another working directory (or by `undo FILE`).
    folders = {"root": settings.root.absolute()}
    if settings.state_dir is not None:
        folders["state_dir"] = settings.state_dir.absolute()
    return settings.model_copy(update={"datasets": datasets, **folders})


def describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    """One line per bad key: ``key = value: what is wrong``."""
    where = f"config file {str(path)!r}, " if path else ""
    lines = [f"invalid configuration ({where}CLIPSORT_* environment or flags):"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown option{_did_you_mean(error['loc'])}")
        else:
            lines.append(f"  {key} = {error['input']!r}: {error['msg']}")
    return "\n".join(lines)


def _did_you_mean(location: tuple[int | str, ...]) -> str:
    """`` (did you mean NAME?)`` for a mistyped option's nearest real name, else nothing."""
    model: type[BaseModel] = DatasetOverrides if location[0] == "datasets" else Settings
    close = difflib.get_close_matches(str(location[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
