"""A Stripe-faithful payment processor simulator, served on loopback.

Start one in a test with :func:`running_simulator` (or :func:`start_simulator`),
from the command line with :func:`serve`.  See docs/simulator.md.
"""

from .app import SimulatorApp, create_app
from .books import OFFLINE_ID_KEY
from .cards import TEST_CARDS, TEST_PAYMENT_METHODS, decide
from .config import FaultConfig, SimConfig
from .server import (
    DEFAULT_PORT,
    PortInUseError,
    SimHandle,
    running_simulator,
    serve,
    start_simulator,
    start_simulator_process,
)

__all__ = [
    "DEFAULT_PORT",
    "OFFLINE_ID_KEY",
    "PortInUseError",
    "TEST_CARDS",
    "TEST_PAYMENT_METHODS",
    "FaultConfig",
    "SimConfig",
    "SimHandle",
    "SimulatorApp",
    "create_app",
    "decide",
    "running_simulator",
    "serve",
    "start_simulator",
    "start_simulator_process",
]
