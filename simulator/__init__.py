"""Cascade's provider simulator: OpenAI and Anthropic wire protocols over a deterministic scenario."""

from cascade.simulator.outcomes import SimAnswer
from cascade.simulator.scenario import Scenario, load_scenario, parse_scenario
from cascade.simulator.server import SimServer, serve_forever

__all__ = ["Scenario", "SimAnswer", "SimServer", "load_scenario", "parse_scenario", "serve_forever"]
