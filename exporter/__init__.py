"""tpw-exporter: GPU efficiency joined with serving throughput, exported as throughput per watt."""

__version__ = "0.1.0"
