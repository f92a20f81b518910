"""A real Prometheus scrapes the real exporter over loopback; values match the simulated scenario."""

from __future__ import annotations

import pytest
from helpers import running_exporter, running_prometheus

from exporter.demo.scenarios import POWER_WOBBLE_WATTS, WORKLOADS


@pytest.mark.parametrize("scenario", ["memory-bound", "compute-bound"])
def test_prometheus_scrapes_the_demo_and_sees_the_scenario(scenario: str) -> None:
    workload = WORKLOADS[scenario]
    args = ["demo", "--scenario", scenario, "--gpus", "2", "--interval", "0.5"]
    with running_exporter(args) as exporter, running_prometheus([f"127.0.0.1:{exporter.port}"]) as prometheus:
        power = prometheus.wait_for_series('tpw_gpu_power_watts{gpu="1"}')
        assert float(power[0]["value"][1]) == pytest.approx(
            workload.power_watts, abs=POWER_WOBBLE_WATTS + 0.01
        )

        dram = prometheus.wait_for_series("tpw_gpu_dram_bandwidth_utilization_ratio")
        assert len(dram) == 2
        for series in dram:
            expected = workload.dram_bandwidth_utilization
            assert float(series["value"][1]) == pytest.approx(expected, rel=0.02)

        tensor = prometheus.wait_for_series("tpw_gpu_tensor_active_ratio")
        assert float(tensor[0]["value"][1]) == pytest.approx(workload.tensor_active, rel=0.02, abs=1e-6)

        up = prometheus.wait_for_series('up{job="tpw"}')
        assert up[0]["value"][1] == "1"
        simulated = prometheus.query('tpw_gpu_info{simulated="true"}')
        assert len(simulated) == 2
