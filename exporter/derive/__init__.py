"""The derive stage: aligned-window throughput per watt (`window`) and the roofline bound (`bound`)."""
