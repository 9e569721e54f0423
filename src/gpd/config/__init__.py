"""Run configuration: a typed schema, bundled presets, YAML files and overrides."""

from gpd.config.loading import DEFAULT_CONFIG, bundled_config_names, load_config, to_yaml
from gpd.config.schema import Config, DataConfig, GPDConfig, ModelConfig, TrainConfig

__all__ = [
    "DEFAULT_CONFIG",
    "Config",
    "DataConfig",
    "GPDConfig",
    "ModelConfig",
    "TrainConfig",
    "bundled_config_names",
    "load_config",
    "to_yaml",
]
