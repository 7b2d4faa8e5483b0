"""A faithful local simulator of Polymarket's public read APIs (tests, demo, fault injection)."""

from polycopy_actors.simulator.http import DEFAULT_LIMITS, Faults, SimConfig, Simulator
from polycopy_actors.simulator.world import World

__all__ = ["DEFAULT_LIMITS", "Faults", "SimConfig", "Simulator", "World"]
