"""What an ``hf:`` student's directory tells the data: its tokenizer, its image processor, its task.

A text student's tokenizer tokenizes an ``hf_disk`` text set (``data.tokenizer=PATH`` overrides
it), up to the student's position count unless ``data.max_length`` says otherwise. A vision
student with an image processor (``preprocessor_config.json``) sets the image size (unless
``data.image_size`` does) and the mean and std the images are normalised by. Any other student
leaves the data as they were. Reading a directory's config is cheap: no weights are loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gpd.config import Config
from gpd.data import DataBundle
from gpd.data.hf_text import TextOptions
from gpd.data.normalization import renormalized
from gpd.errors import ConfigError, first_line
from gpd.models import transformers_hub


@dataclass(frozen=True)
class HFPreparation:
    """How the data of a run are prepared for its student."""

    text: TextOptions
    image_size: int | None = None  # the image processor's size (square)
    mean: tuple[float, ...] | None = None  # the image processor's normalisation
    std: tuple[float, ...] | None = None
    preprocessor: str | None = None  # the directory whose tokenizer / image processor the data use
    task: str | None = None  # the student's task: "image" | "text" | None (not a transformers model)

    def apply(self, bundle: DataBundle, log: Any = print) -> DataBundle:
        """The bundle normalised by the image processor (when its channel count fits), its source recorded."""
        if bundle.task == "image" and self.mean is not None and self.std is not None:
            if len(self.mean) == bundle.in_chans:
                bundle.train, bundle.test = (
                    renormalized(bundle.train, self.mean, self.std),
                    renormalized(bundle.test, self.mean, self.std),
                )
                if bundle.val is not None:
                    bundle.val = renormalized(bundle.val, self.mean, self.std)
                bundle.mean, bundle.std = self.mean, self.std
            else:
                log(
                    f"the image processor of {self.preprocessor} normalises {len(self.mean)} channel(s), the data have "
                    f"{bundle.in_chans}: the data set's own mean and std are kept"
                )
        if bundle.preprocessor is None:
            bundle.preprocessor = self.preprocessor
        return bundle


def _image_processor(directory: Path) -> tuple[int | None, tuple[float, ...] | None, tuple[float, ...] | None]:
    """(size, mean, std) of the directory's image processor."""
    transformers = transformers_hub.import_transformers(f"the image processor in {directory}")
    try:
        with transformers_hub.quiet(transformers):
            processor = transformers.AutoImageProcessor.from_pretrained(str(directory))
    except Exception as err:
        raise ConfigError(f"cannot read the image processor in {directory}: {first_line(err)}") from None
    size = getattr(processor, "size", None) or {}
    get = size.get if hasattr(size, "get") else lambda key: getattr(size, key, None)
    side = get("height") or get("shortest_edge")
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if not getattr(processor, "do_normalize", True) or mean is None or std is None:
        return (int(side) if side else None), None, None
    as_tuple = lambda v: tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))  # noqa: E731
    return (int(side) if side else None), as_tuple(mean), as_tuple(std)


def prepare(cfg: Config) -> HFPreparation:
    """The preparation of ``cfg``'s data for its student (``model.student``)."""
    d = cfg.data
    options = TextOptions(d.text_key, d.text_pair_key, d.tokenizer, d.max_length)
    name = cfg.model.student
    if not transformers_hub.is_hf_name(name):
        return HFPreparation(options, preprocessor=d.tokenizer)
    config, task, directory = transformers_hub.read_config(name, cfg.model.trust_remote_code)
    if task == "text":
        positions = getattr(config, "max_position_embeddings", None)
        tokenizer = d.tokenizer or (str(directory) if directory is not None else transformers_hub.location(name))
        options = replace(
            options,
            tokenizer=tokenizer,
            required=True,
            model_positions=positions if isinstance(positions, int) else None,
        )
        return HFPreparation(options, preprocessor=tokenizer, task=task)
    if directory is None or not transformers_hub.preprocessor_files(directory)[1]:
        return HFPreparation(options, preprocessor=None, task=task)
    size, mean, std = _image_processor(directory)
    return HFPreparation(options, size, mean, std, str(directory), task)


def check_task(name: str, task: str | None, data: DataBundle, role: str) -> None:
    """A one-line ConfigError for a text model on images or an image model (any non-text one) on text."""
    if data.task == "text" and task != "text":
        raise ConfigError(
            f"{role} {name} is {'an image' if task == 'image' else 'not a text'} model but {data.name} holds text; "
            "use an hf:DIR text classifier (a ...ForSequenceClassification)"
        )
    if data.task == "image" and task == "text":
        raise ConfigError(
            f"{role} {name} is a text model but {data.name} holds images; use an image model or a text data set"
        )
