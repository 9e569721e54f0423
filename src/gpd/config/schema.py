"""The typed configuration of a training run.

The dataclasses are the single source of truth for keys, types and defaults;
OmegaConf checks every YAML file and ``key=value`` override against them, so an
unknown key or a value of the wrong type is an error, not a silent no-op. A key with
a fixed set of string values is typed with its ``Literal`` alias from
:mod:`gpd.choices`, which the library's arguments use too. The sections of gpd's KD
methods (``kd``, ``dkd``, ``reviewkd``, and ``cwd`` of segmentation) are the methods' own options dataclasses
(:mod:`gpd.distill.kd_methods`, :mod:`gpd.distill.reviewkd`); a user's method brings its
own section (:mod:`gpd.config.kd_sections`). ``kd.method`` is checked against the
registry of KD methods (:data:`gpd.distill.KD_METHODS`), not a fixed set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpd.choices import (
    BranchInit,
    BranchKind,
    InterpolationName,
    LayoutChoice,
    MemoryMode,
    NonfinitePolicy,
    PrecisionName,
    StepRule,
)
from gpd.deprecated import warn_renamed
from gpd.distill.kd_methods import DKDOptions, HintonKDOptions
from gpd.distill.reviewkd import ReviewKDOptions
from gpd.distill.tasks.dense_kd import CWDOptions


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # fashion_mnist | mnist | digits | cifar10 | cifar100 | imagefolder | hf_disk
    # segmentation (task=segmentation): fashion_mnist_seg | segfolder (data.root: train/ and test/ of images/, masks/)
    root: str | None = None  # None: $GPD_DATA, ./data, ~/.cache/gpd/data (and Debian's folder)
    train_subset: int | None = None  # keep only this many training samples
    test_subset: int | None = None  # evaluate on only this many test samples (quick runs)
    canvas_size: int | None = None  # fashion_mnist_seg: the canvas side (null: 64); it generates *_subset canvases
    download: bool = False  # let torchvision download the set (needs internet)
    augment: bool = True  # random crop and flip where the data set uses them
    image_size: int | None = None  # resize; None keeps the native size
    num_workers: int = 0  # DataLoader worker processes
    val_split: float | None = None  # hold out this fraction (or count) of training samples to select weights on
    val_seed: int = 0  # the seed of the stratified validation split (fixed across train.seed)
    image_key: str = "image"  # hf_disk: the column holding the images
    label_key: str = "label"  # hf_disk: the column holding the class labels
    text_key: str = "text"  # hf_disk text: the column holding the text (a set with no image_key column)
    text_pair_key: str | None = None  # hf_disk text: a second column, for sentence pairs
    tokenizer: str | None = None  # hf_disk text: a tokenizer directory (default: the hf: student's directory)
    max_length: int | None = None  # hf_disk text: tokens kept per text (default: the model's positions, <= 512)
    # The DeiT recipe's augmentations (timm). Setting any of the next four switches the
    # training images of imagefolder/CIFAR to timm's create_transform pipeline; unset, the
    # default pipelines above are used unchanged.
    randaugment: str | None = None  # a timm auto_augment string, e.g. rand-m9-mstd0.5-inc1; null: off
    random_erasing: float = 0.0  # probability of timm's RandomErasing (per-pixel random fill)
    color_jitter: float | None = None  # brightness/contrast/saturation factor; timm skips it under RandAugment
    interpolation: InterpolationName | None = None  # bilinear | bicubic | nearest for resizing (null: bilinear)
    # Mixup/CutMix of each training batch (timm Mixup; soft targets, label smoothing applied there).
    mixup: float = 0.0  # Mixup alpha; 0: off
    cutmix: float = 0.0  # CutMix alpha; 0: off
    mixup_prob: float = 1.0  # probability of mixing a batch at all
    mixup_switch_prob: float = 0.5  # with both on: probability of CutMix instead of Mixup


@dataclass
class ModelConfig:
    student: str = "resnet8"  # a bundled name, tv:NAME (torchvision), timm:NAME or hf:PATH (transformers)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model's factory (hf: config fields)
    trust_remote_code: bool = False  # hf: students and teachers: run code from their directory (auto_map)


@dataclass
class GPDConfig:
    enabled: bool = True  # false: the plain student trains alone (the baseline)
    ratio: float = 2.0  # width of the dynamic teacher relative to the student
    sce_weight: float = 3.0  # lambda: weight of SCE(student || stop_grad(dynamic teacher)); formerly gpd.kd_weight
    sce_eps: float = 0.1  # label smoothing of the dynamic teacher's soft targets
    noise_std: float = 1e-3  # symmetry-breaking noise on D's copies, relative to each tensor's RMS; 0: none
    branches: BranchKind = "none"  # orepa: train 3x3 stride-1 convs as six-branch blocks (merged on export)
    branch_init: BranchInit = "default"  # default (from scratch) | identity (blocks start equal to the convs)
    share: bool = True  # false (ablation): D is built by IR but keeps parameters separate from the student's
    step_rule: StepRule = "paper"  # paper: the paper's per-layer steps; plain: the plain networks' (docs/method.md)
    layout: LayoutChoice = "auto"  # D's copies: auto (tiled, else interleaved where it alone is exact) | tiled | ...

    @property
    def kd_weight(self) -> float:
        """Deprecated: the old name of ``sce_weight`` (λ weighs SCE, not the KD method; that is ``kd.weight``)."""
        warn_renamed("GPDConfig.kd_weight", "GPDConfig.sce_weight")
        return self.sce_weight

    @kd_weight.setter
    def kd_weight(self, value: float) -> None:
        warn_renamed("GPDConfig.kd_weight", "GPDConfig.sce_weight")
        self.sce_weight = value

    @property
    def compensate_step(self) -> bool:
        """Deprecated: ``step_rule == "plain"`` (the old boolean name of the step rule)."""
        warn_renamed("GPDConfig.compensate_step", "GPDConfig.step_rule")
        return self.step_rule == "plain"


@dataclass
class StudentConfig:
    checkpoint: str | None = None  # fine-tuning: a run dir, student.pt or state_dict file (strict load)
    pretrained: bool = False  # fine-tuning from torchvision/timm weights (needs internet; a dry run uses random ones)
    pretrained_file: str | None = None  # weights on disk from another task: head re-initialised, input channels adapted


@dataclass
class TeacherConfig:
    model: str | None = None  # the static teacher's architecture (not needed for a gpd student.pt)
    checkpoint: str | None = None  # a run dir, student.pt or state_dict file of the teacher
    pretrained: bool = False  # torchvision/timm weights (needs internet; a dry run uses random ones)
    pretrained_file: str | None = None  # weights on disk (state_dict or safetensors) for teacher.model, adapted
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class KDMethodChoice:
    method: str = "none"  # none | kd | dkd | reviewkd | a registered name | module:Class | file.py:Class


@dataclass
class KDConfig(HintonKDOptions, KDMethodChoice):
    """The ``kd`` section: ``kd.method``, then the options of Hinton KD (``kd.temperature`` ...)."""


DKDConfig = DKDOptions  # the dkd section
ReviewKDConfig = ReviewKDOptions  # the reviewkd section
CWDConfig = CWDOptions  # the cwd section (kd.method=cwd, segmentation only)


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: str = "sgd"  # any timm optimizer name ('sgd' is SGD with Nesterov momentum)
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_norms_and_biases: bool = False  # true: 1-D tensors and biases decay too (the paper's CNN recipes)
    scheduler: str = "cosine"  # any timm scheduler: cosine | step | multistep | poly | ...
    warmup_epochs: float = 0.1
    min_lr: float = 0.0
    decay_milestones: list[int] = field(default_factory=list)  # epochs, for scheduler=multistep
    decay_rate: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = 5.0  # max global gradient norm (as the paper's optimizer sees it); null disables clipping
    grad_probe_every: int = 50  # every N steps, measure the student's and D's loss-gradient norms apart; 0: never
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each process takes its LOCAL_RANK GPU)
    channels_last: bool = True
    precision: PrecisionName = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler); CPU or GPU
    compile: bool = False  # torch.compile the training forward pass (both halves in memory_mode=sequential)
    memory_mode: MemoryMode = "joint"  # joint: one backward of the summed loss; sequential: D's backward, then S's
    ema: bool = False  # keep an exponential moving average of the trained weights and evaluate it too
    ema_epochs: float = (
        1.0  # the EMA's averaging horizon in epochs (per-step decay exp(-1/steps)); see docs/training.md
    )
    ema_images: int | None = None  # the horizon in training images instead (any batch size, any process count)
    ema_decay: float | None = None  # an explicit per-step decay (older configs); overrides the horizons
    ema_warmup: bool = True  # timm's EMA warm-up: the decay ramps up over the first steps
    on_nonfinite: NonfinitePolicy = "stop"  # stop: end the run at a NaN/inf loss; skip: drop that step and go on
    nonfinite_check_every: int = 50  # stop: read the device's non-finite flag every N steps and at epoch ends
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    threads: str = "auto"  # CPU threads per process: auto (the cores other processes leave free) or a number
    keep_host_memory: bool = True  # CPU runs: glibc keeps freed memory for reuse (no page faults per step)
    deterministic: bool = False  # deterministic algorithms (bitwise reproducible runs and resumes; slower on GPU)
    log_interval_s: float = 30.0  # where the log is not a terminal (a file, a pipe): a progress line every N s; 0: none


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gpd: GPDConfig = field(default_factory=GPDConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    dkd: DKDConfig = field(default_factory=DKDConfig)
    reviewkd: ReviewKDConfig = field(default_factory=ReviewKDConfig)
    cwd: CWDConfig = field(default_factory=CWDConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str | None = None  # None: runs/<data>-<student>-<gpd|baseline>-<time>
    task: str = "classification"  # classification | segmentation | a registered name | module:Class | file.py:Class
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's keyword options (e.g. aux_weight)
