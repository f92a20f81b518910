"""The demo node: scenarios driving the simulated GPUs, and the simulated serving engine (an HTTP server)."""
