"""Metrics that cost something per request."""

from __future__ import annotations


def test_per_level_times_are_observed_for_one_search_in_level_sample() -> None:
    from service.telemetry import LEVEL_SAMPLE, Metrics

    metrics = Metrics()
    timers = [metrics.level_timer() for _ in range(3 * LEVEL_SAMPLE)]
    sampled = [t for t in timers if t is not None]
    assert len(sampled) == 3
    for timer in sampled:
        for level in (8, 9):
            timer(level, 0.001)
    count = metrics.registry.get_sample_value("jtm_beam_level_seconds_count", {"level": "9"})
    assert count == 3
