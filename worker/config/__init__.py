"""Configuration: TOML parsed once into frozen, validated objects."""

from cascade.worker.config.load import load_settings
from cascade.worker.config.schema import EngineConfig, Pipeline, Price, ProducerConfig, RedisConfig, Settings, Tier

__all__ = [
    "EngineConfig",
    "Pipeline",
    "Price",
    "ProducerConfig",
    "RedisConfig",
    "Settings",
    "Tier",
    "load_settings",
]
