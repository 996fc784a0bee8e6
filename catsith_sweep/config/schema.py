"""The experiment file, as typed sections. Every field's docstring is its documentation (and its
description in `python -m catsith_sweep schema`).

One section per trainer (`lora`, `vae`, `distill`, `full`) holds what only that trainer reads; the
section of the chosen `trainer` is filled with defaults when absent, and a section of another trainer
is an error. Everything else (`data`, `train`, `eval`, `search`, ...) is shared, so the sweep engine
never special-cases a trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from catsith_sweep.config.space import Distribution, check_bool_int

TRAINER_NAMES: tuple[str, ...] = ("lora", "vae", "distill", "full")
BUILTIN_BASE = "builtin:catsith-tiny"
# `search.metric` when the experiment names none, for trainers whose main metric is not `sprite_fid`.
DEFAULT_METRICS: dict[str, str] = {"vae": "sprite_fid_prior"}


class Section(BaseModel):
    # allow_inf_nan: no field means "infinite" (`learning_rate: .inf` is a typo or a test of us).
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_int_mixups(cls, value: Any, info: ValidationInfo) -> Any:
        """Pydantic's lax mode reads `rank: true` as 1 and `enabled: 1` as true; refuse both."""
        field = cls.model_fields.get(info.field_name or "")
        return value if field is None else check_bool_int(value, field.annotation)


SectionT = TypeVar("SectionT", bound=Section)


class ModelSection(Section):
    base: str = BUILTIN_BASE
    """Base model: `builtin:catsith-tiny` (built and cached on first use), a local diffusers folder, or a
    Hugging Face hub id such as `segmind/tiny-sd` (needs the hub or a local HF cache)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `base` is a hub id."""
    cache_dir: Path | None = None
    """Where built bases and sprite feature networks are cached; default: the user cache dir."""


class AugmentSection(Section):
    enabled: bool = False
    """Augment training images (the guide's colour jitter and light noise). Turns off latent caching."""
    color_jitter_p: float = Field(0.5, ge=0, le=1)
    """Probability of colour jitter per image."""
    brightness: float = Field(0.1, ge=0)
    contrast: float = Field(0.1, ge=0)
    saturation: float = Field(0.1, ge=0)
    hue: float = Field(0.02, ge=0, le=0.5)
    noise_p: float = Field(0.3, ge=0, le=1)
    """Probability of Gaussian noise per image."""
    noise_std: tuple[float, float] = (0.004, 0.009)
    """Range of the noise's standard deviation, in [0, 1] image units."""
    hflip_p: float = Field(0.0, ge=0, le=1)
    """Horizontal flip probability for NON-directional sprites only; directional ones are never mirrored."""


class DataSection(Section):
    path: Path | None = None
    """Dataset folder in the guide's layout (images/, captions/, metadata.json). Empty: the builtin
    synthetic sprite set, generated from `synth_seed` and cached."""
    synth_seed: int = 0
    """Seed of the synthetic sprite set (used when `path` is empty)."""
    synth_variants: int = Field(3, ge=1, le=20)
    """Designs per entity kind in the synthetic set."""
    synth_style: Literal["16bit", "handheld", "neon"] = "16bit"
    """Art style of the synthetic set (see data/synth_styles.py): `16bit` (what the builtin base is
    trained on), `handheld` (a four-shade green palette) or `neon` (complementary, saturated colours
    with one dark violet outline: the look the `lora_style` demo adapts the base to)."""
    caption_colors: Literal["guide", "measured"] = "guide"
    """Colour words of the captions the synthetic set is generated with (data/captions.py): `guide`,
    the guide's rule word for word (the strictly largest channel of base_color: any red-dominant colour
    is "red", grey-brown asteroids included), or `measured`, the word (grey, brown, orange, purple, ...)
    for the colour covering most of each design's opaque pixels. Each rule has its own cached set. A
    dataset at `path` keeps its own caption files: write them with `dataset caption DIR --colors ...`
    (or `dataset import-sheet ... --colors ...`)."""
    resolution: int = Field(64, ge=8, le=1024)
    """Sprite size in pixels (square). CatSith's sprite preset is 64."""
    val_fraction: float = Field(0.15, ge=0, lt=1)
    """Share of entities held out for evaluation, by every trainer (split by entity, never by image;
    `data.split.split_by_entity`). Selection metrics are computed on the held-out side only; a split
    with fewer than 8 held-out images is refused."""
    split_seed: int = 0
    """Seed of the held-out split. Its own key, not `train.seed`, so every trial of a sweep holds out
    the same entities even when `train.seed` is searched: keep it fixed within a sweep."""
    augment: AugmentSection = Field(default_factory=AugmentSection)
    cache_latents: bool = True
    """Encode images and captions once and train on the cache (kohya's cache_latents). Ignored while
    augmentation is on, since each step then sees new pixels."""


class TrainSection(Section):
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps per trial. Give this or `epochs`, not both."""
    epochs: int | None = Field(None, ge=1)
    """Passes over the training split. Give this or `max_steps`, not both."""
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "cosine"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps before the schedule."""
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping norm; empty for none."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """`auto`: bf16 on a CUDA device that supports it, else fp16 on CUDA, fp32 on CPU. fp16/bf16 are
    refused on CPU at run time."""
    gradient_checkpointing: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` takes CUDA when present."""
    num_threads: int | None = Field(None, ge=1)
    """torch CPU threads per trial; default: the trial's CPU share."""

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainSection:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(
                "Can't provide both `train.max_steps` and `train.epochs`, "
                f"but got max_steps={self.max_steps}, epochs={self.epochs}"
            )
        if self.max_steps is None and self.epochs is None:
            self.max_steps = 200
        return self


class EvalSection(Section):
    every_n_steps: int = Field(50, ge=1)
    """Evaluate (metrics, sample grid, checkpoint) every N optimizer steps and at the end."""
    prompts: list[str] | None = None
    """Fixed prompts of the sample grid; default: one caption per kind of the dataset. The same
    prompts and seeds in every trial, so grids compare."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    num_inference_steps: int = Field(15, ge=1)
    """Sampler steps (CatSith's sprite preset uses 15)."""
    guidance_scale: float = Field(4.0, ge=1.0)
    num_metric_samples: int = Field(48, ge=4)
    """Generated images per evaluation for FID/KID/accuracies."""
    feature_extractor: Literal["sprite", "inception"] = "sprite"
    """`sprite`: the project's sprite network (offline); `inception`: torchmetrics' official nets
    (needs the `official-metrics` extra and their weights). Metric names carry the choice."""
    noise_seeds: int = Field(3, ge=1, le=20)
    """Evaluations of the sweep's untuned starting point (its baseline), each at its own eval seed:
    their spread is the sweep's noise floor (`noise_floor_<metric>` on the parent run), and trials
    within it of the best are ties on the leaderboard. The first is the trials' own seed, so
    `baseline_<metric>` compares like for like. Costs that many evaluations once per setup (cached);
    1: no noise floor and no ties."""


class LoraSection(Section):
    rank: int = Field(4, ge=1, le=1024)
    """LoRA rank (the guide's network_dim)."""
    alpha: float = Field(4.0, gt=0)
    """LoRA alpha (the guide's network_alpha); the update is scaled by alpha / rank."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1
    )
    """UNet module names that get adapters (default: the attention projections)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    train_text_encoder: bool = False
    """Also put adapters on the text encoder's attention projections."""
    noise_offset: float = Field(0.0, ge=0)
    min_snr_gamma: float | None = Field(None, gt=0)
    """Min-SNR loss weighting gamma (5.0 is usual); empty for plain MSE."""
    caption_dropout_rate: float = Field(0.0, ge=0, le=1)
    """Probability of training a step's caption as empty (helps classifier-free guidance)."""


class VaeSection(Section):
    latent_dim: int = Field(64, ge=2, le=4096)
    hidden_dims: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    """Encoder channels per down-sampling block (the decoder mirrors them)."""
    beta: float = Field(1.0, ge=0)
    """Weight of the KL term."""
    kl_warmup_steps: int = Field(0, ge=0)
    """Ramp beta linearly from 0 over these steps."""
    perceptual_weight: float = Field(0.0, ge=0)
    """Weight of the perceptual term over the sprite feature network."""
    direction_weight: float = Field(0.1, ge=0)
    """Weight of the guide's direction-consistency term (latents of one entity, all directions)."""


class DistillSection(Section):
    teacher: str | None = None
    """Teacher model, frozen: `builtin:catsith-tiny`, a local diffusers folder or a hub id, as
    `model.base`; default: `model.base`."""
    level: Literal["small", "tiny", "micro"] = "tiny"
    """How much of the teacher's UNet the student drops (the guide's architecture options; what each
    level removes is in models/student.py): `small` the mid block (and extra pairs per stage), `tiny`
    also the outer stage's attention, `micro` also the innermost stage."""
    task_weight: float = Field(1.0, ge=0)
    """Weight of MSE(student noise prediction, true noise): the ordinary diffusion loss (BK-SDM's 1.0)."""
    output_weight: float = Field(1.0, ge=0)
    """Weight of MSE(student noise prediction, teacher's): output-level distillation (the guide's 1.0)."""
    feature_weight: float = Field(0.5, ge=0)
    """Weight of the summed MSE between matched down/up block outputs of student and teacher (the
    guide's 0.5)."""
    perceptual_weight: float = Field(0.1, ge=0)
    """Weight of the MSE between sprite-feature-network features of the images the two predictions
    imply (decoded x̂0), the guide's perceptual term with the sprite net in place of VGG (0.1)."""
    normalize_losses: bool = False
    """Divide each term by its value at the first step (kept in checkpoints), so the weights compare
    terms of like scale: BK-SDM's feature term otherwise dwarfs the others."""
    caption_dropout_rate: float = Field(0.1, ge=0, le=1)
    """Share of training captions replaced by the empty one, so the student also learns the teacher's
    unconditional prediction that classifier-free guidance uses."""
    latency_repeats: int = Field(5, ge=1)
    """Timed sampling runs per model per evaluation (medians of interleaved runs: trainers/latency.py)."""


class FullSection(Section):
    architecture: Literal["catsith-tiny"] = "catsith-tiny"
    """Architecture built from scratch (the guide's "Full training" option, scaled to sprites)."""
    vae_steps: int = Field(600, ge=1)
    """The first N steps of the budget train the VAE alone; the rest train UNet and text encoder."""
    vae_learning_rate: float = Field(1e-3, gt=0)
    vae_batch_size: int = Field(16, ge=1)
    vae_kl_weight: float = Field(1e-6, ge=0)
    """KL weight of the VAE (small: the latent must stay informative)."""
    vae_loss: Literal["sprite", "mse"] = "sprite"
    """VAE reconstruction loss: `sprite` is L1 on colour weighted by alpha plus L1 on alpha (what the
    round trip on opaque pixels measures; models/vae_loss.py); `mse` is plain MSE on RGBA."""
    vae_chroma_weight: float = Field(0.0, ge=0)
    """With `vae_loss: sprite`, weight of an extra L1 on the red-green and yellow-blue chroma of opaque
    pixels, so a small latent keeps every hue instead of spending itself on edges (0: off)."""
    vae_alpha_weight: float = Field(1.0, ge=0)
    """With `vae_loss: sprite`, weight of its L1 on alpha (1: the builtin's). Higher trades colour for
    crisper edges and transparency."""
    vae_lr_scheduler: Literal["constant", "cosine", "cosine_restarts"] = "cosine"
    """Learning-rate schedule of the VAE phase, over its `vae_steps` (no warm-up). `cosine_restarts`:
    a cosine over the first half, then two over a quarter each from half the rate."""
    vae_recolour: float = Field(0.5, ge=0, le=1)
    """Share of VAE-phase sprites given a random hue, saturation and gamma, so the VAE learns to
    represent palettes it was not built on (a user's sheet, a new style). 0: off."""
    vae_turns: bool = True
    """Turn each VAE-phase batch by a random multiple of 90 degrees and maybe mirror it."""
    noise_offset: float = Field(0.0, ge=0)
    caption_dropout_rate: float = Field(0.1, ge=0, le=1)
    """Empty captions in training, so classifier-free guidance has an unconditional model."""


class TradeoffPlot(Section):
    x: str
    """A searched key (e.g. `vae.beta`) on the horizontal axis."""
    y: list[str] = Field(min_length=1)
    """Metrics plotted against it, one panel each (e.g. `[recon_mse, sprite_fid_prior]`)."""
    log_x: bool = False


class BudgetSection(Section):
    """Limits on a whole sweep; any of them (the first one reached ends it). The sweep starts no trial
    that its forecast says would not fit in what is left, stops the running ones when a limit is
    reached (KILLED in MLflow with `catsith.ended_by`, PRUNED in Optuna, their last evaluation's
    checkpoint kept) and writes the normal summary."""

    wall_minutes: float | None = Field(None, gt=0)
    """Wall time of the sweep, from `run` preparing its dataset to its summary written."""
    compute_hours: float | None = Field(None, gt=0)
    """Trial time times each trial's share: GPU-hours (`resources.gpu` per trial) when trials use GPUs,
    else CPU-core-hours (`resources.cpu` per trial)."""
    cost_usd: float | None = Field(None, gt=0)
    """Dollars: compute hours (as `compute_hours` counts them) times `cost_per_hour`."""
    cost_per_hour: float | None = Field(None, gt=0)
    """Dollars per compute hour (per GPU-hour on GPUs, per CPU-core-hour on CPUs), e.g. a rate of the
    planner's price table (`catsith_sweep/plan/prices.yaml`). Needed by `cost_usd`."""

    @model_validator(mode="after")
    def _cost_needs_price(self) -> BudgetSection:
        if self.cost_usd is not None and self.cost_per_hour is None:
            raise ValueError(f"`cost_usd` ({self.cost_usd}) needs `cost_per_hour`, the dollars per compute "
                             "hour (GPU-hour, or CPU-core-hour on CPUs), to price the sweep")
        return self

    def limits(self) -> dict[str, float]:
        """The limits that are set, by field name."""
        return {k: v for k, v in self.model_dump().items() if k != "cost_per_hour" and v is not None}


class SearchSection(Section):
    space_file: str | None = None
    """A search-space file: a name in `search_spaces/` (e.g. `lora`) or a path relative to the
    experiment file. Inline `space` entries override its keys."""
    space: dict[str, Distribution] = Field(default_factory=dict)
    """Dotted config key -> distribution (categorical, int, float, fixed)."""
    metric: str | list[str] = "sprite_fid"
    """Metric(s) to optimise, as the trainer reports them. Default: the trainer's main quality metric
    (`sprite_fid`; `sprite_fid_prior` for `trainer: vae`, whose samples come from its prior)."""
    mode: Literal["min", "max"] | list[Literal["min", "max"]] = "min"
    sampler: Literal["tpe", "random", "cmaes", "gp", "nsga2", "grid"] = "tpe"
    """Optuna sampler. `grid`: every combination of the searched values once, in a seeded random order
    (Optuna's BruteForceSampler); its keys need finite values (categorical, fixed, int, float with
    `step`), and `num_samples` at most the number of combinations."""
    scheduler: Literal["asha", "median", "none"] = "asha"
    """Early stopping across trials, judged on one metric (`scheduler_metric`). In a multi-objective
    sweep a stopped trial is told to Optuna as pruned and never enters the Pareto front (sweep/multi.py)."""
    scheduler_metric: str | None = None
    """The objective the scheduler judges trials by; default: the first of `metric`. Must be one of them."""
    grace_period: int = Field(1, ge=1)
    """Evaluations a trial always gets before the scheduler may stop it."""
    reduction_factor: int = Field(2, ge=2)
    num_samples: int = Field(4, ge=1)
    """Trials to run."""
    max_concurrent_trials: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    """Retries of a trial whose process died, from its last checkpoint."""
    seed: int | None = 0
    """Sampler seed, for reproducible suggestions; empty for random."""
    plots: list[TradeoffPlot] = Field(default_factory=list)
    """Extra parent-run plots: final metrics of every trial against a searched key (a trade-off view,
    such as reconstruction against prior-sample quality over the VAE's beta)."""
    budget: BudgetSection | None = None
    """Limits on the whole sweep (wall time, compute, cost); empty: run every trial."""

    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    def modes(self) -> list[str]:
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    def scheduler_objective(self) -> tuple[str, str]:
        """(metric, mode) the early-stopping scheduler judges by: `scheduler_metric`, else the first."""
        metrics, modes = self.metrics(), self.modes()
        name = self.scheduler_metric or metrics[0]
        return name, modes[metrics.index(name)] if name in metrics else modes[0]


class ResourcesSection(Section):
    cpu: float = Field(1.0, gt=0)
    """CPUs per trial."""
    gpu: float = Field(0.0, ge=0)
    """GPUs per trial; a fraction (0.5) packs trials onto one GPU, above 1 must be whole."""


class TrackingSection(Section):
    uri: str | None = None
    """MLflow tracking URI; default `sqlite:///mlflow.db` in the working directory."""
    experiment_name: str | None = None
    """MLflow experiment; default: the experiment's `name`."""
    log_every_n_steps: int = Field(10, ge=1)
    """Training-loss logging interval (evaluations are always logged)."""


ExportFormat = Literal["peft_safetensors", "kohya_safetensors", "catsith_json", "onnx", "diffusers"]


class ExportSection(Section):
    formats: list[ExportFormat] | None = None
    """Artifacts each trial writes; default: the trainer's own (LoRA: peft_safetensors +
    catsith_json; VAE: onnx)."""


class CreatorSection(Section):
    name: str = "catsith_sweep"
    contact: str | None = None
    website: str | None = None


class PromoteSection(Section):
    registry: Path | None = None
    """CatSith LoRA registry; default: the user registry (`~/.local/share/catsith/loras` on Linux)."""
    models_dir: Path = Path("models")
    """CatSith models folder for ONNX models (SpriteVAE)."""
    name: str | None = None
    """Package name; default: the experiment's `name`."""
    category: Literal["Aesthetic", "Entity", "Effects", "Environment", "Color"] = "Aesthetic"
    description: str = ""
    tags: list[str] = Field(default_factory=lambda: ["pixel-art", "sprites"])
    license: str = "CC-BY-4.0"
    creator: CreatorSection = Field(default_factory=CreatorSection)


class Experiment(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    """Experiment name: letters, digits, `_`, `-`, `.`; names the MLflow experiment and outputs."""
    description: str = ""
    trainer: Literal["lora", "vae", "distill", "full"]
    """Which trainer each trial runs."""
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    lora: LoraSection | None = None
    vae: VaeSection | None = None
    distill: DistillSection | None = None
    full: FullSection | None = None
    search: SearchSection = Field(default_factory=SearchSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    export: ExportSection = Field(default_factory=ExportSection)
    promote: PromoteSection = Field(default_factory=PromoteSection)

    @model_validator(mode="before")
    @classmethod
    def _fill_trainer_section(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("trainer") in TRAINER_NAMES and data.get(data["trainer"]) is None:
            data = {**data, data["trainer"]: {}}
        default_metric = DEFAULT_METRICS.get(str(data.get("trainer"))) if isinstance(data, dict) else None
        search = data.get("search") if isinstance(data, dict) else None
        if default_metric and (search is None or (isinstance(search, dict) and "metric" not in search)):
            data = {**data, "search": {**(search or {}), "metric": default_metric}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Experiment:
        # The loader collects these itself to attach file lines; plain construction raises them.
        if info.context and info.context.get("defer_cross_checks"):
            return self
        problems = self.cross_check_problems()
        if problems:
            raise ValueError("; ".join(f"{'.'.join(loc)}: {msg}" for loc, msg in problems))
        return self

    def cross_check_problems(self) -> list[tuple[tuple[str, ...], str]]:
        """Rules across sections, each as (key path, message)."""
        problems: list[tuple[tuple[str, ...], str]] = []
        for other in TRAINER_NAMES:
            if other != self.trainer and getattr(self, other) is not None:
                problems.append(
                    ((other,), f"section `{other}` is for trainer `{other}`, but trainer is `{self.trainer}`")
                )
        metrics, modes = self.search.metrics(), self.search.modes()
        if len(modes) != len(metrics):
            problems.append(
                (("search", "mode"), f"one mode per metric must be given, but got {len(metrics)} "
                 f"metrics and {len(modes)} modes")
            )
        if self.search.scheduler_metric is not None and self.search.scheduler_metric not in metrics:
            problems.append(
                (("search", "scheduler_metric"), f"must be one of the searched metrics {metrics}, but got "
                 f"{self.search.scheduler_metric!r}")
            )
        if self.search.sampler == "nsga2" and len(metrics) < 2:
            problems.append((("search", "sampler"), "nsga2 is multi-objective and needs 2+ metrics"))
        if self.search.sampler == "cmaes" and len(metrics) > 1:
            problems.append((("search", "sampler"), "cmaes optimises a single metric"))
        if self.resources.gpu > 1 and not float(self.resources.gpu).is_integer():
            problems.append(
                (("resources", "gpu"), f"a GPU count above 1 must be whole, but got {self.resources.gpu}")
            )
        return problems

    @property
    def trainer_section(self) -> Section:
        section = getattr(self, self.trainer)
        assert section is not None  # filled by _fill_trainer_section
        return section

    def trainer_config(self, kind: type[SectionT]) -> SectionT:
        """The chosen trainer's section, typed: `experiment.trainer_config(LoraSection)` in the LoRA
        trainer (a TypeError when the experiment is for another trainer)."""
        section = self.trainer_section
        if not isinstance(section, kind):
            raise TypeError(f"trainer `{self.trainer}` has a {type(section).__name__}, not a {kind.__name__}")
        return section

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or "sqlite:///mlflow.db"

    @property
    def mlflow_experiment(self) -> str:
        return self.tracking.experiment_name or self.name
