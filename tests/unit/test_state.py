"""The service's readiness: a bundle that finishes loading after shutdown began never turns it back on."""

from __future__ import annotations

import asyncio
import threading

from rmserve.service.core.scoring import Scorer
from rmserve.service.process.state import ServiceState
from rmserve.service.settings import Settings
from tests.waiting import wait_until


def test_a_bundle_loaded_after_shutdown_began_is_not_served(tiny_bundle, monkeypatch):
    loading, finish = threading.Event(), threading.Event()
    real_load = Scorer.load

    def gated_load(settings, metrics, within=None):
        loading.set()
        assert finish.wait(30), "the test never let the load finish"
        return real_load(settings, metrics, within)

    monkeypatch.setattr(Scorer, "load", staticmethod(gated_load))
    state = ServiceState(Settings(bundle=tiny_bundle, device="cpu"))
    seen: list[bool] = []
    state.readiness_listeners.append(seen.append)

    async def main() -> None:
        task = asyncio.create_task(state.load())
        await asyncio.to_thread(wait_until, loading.is_set, "the bundle to start loading")
        state.set_ready(False)  # what SIGTERM does (runtime.begin_shutdown), while the bundle loads
        state.draining = True
        finish.set()
        await task
        await state.close()

    try:
        asyncio.run(main())
    finally:
        finish.set()
    assert seen == [] and not state.ready and state.metrics.ready._value.get() == 0
