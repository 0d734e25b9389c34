"""The model holder: lazy load with measured load time, idle unload, pin, swap and restore."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from agent.engine.holder import ModelHolder, ModelSpec


@dataclass
class FakeEngine:
    name: str
    provider: str = "cpu"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts loads; each takes ``delay_s`` of real time, so load times are measurable."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.loaded: list[str] = []
        self.delay_s = delay_s

    def __call__(self, spec: ModelSpec) -> FakeEngine:
        time.sleep(self.delay_s)
        self.loaded.append(spec.name)
        return FakeEngine(spec.name)


SPEC = ModelSpec(name="small", path=Path("/models/small"))


def _holder(
    *, idle_unload_s: float | None = 60.0, pinned: bool = False, delay_s: float = 0.0
) -> tuple[ModelHolder[FakeEngine], Loader, Clock, list[str]]:
    loader, clock, changes = Loader(delay_s), Clock(), []
    holder = ModelHolder(
        SPEC,
        loader,
        idle_unload_s=idle_unload_s,
        pinned=pinned,
        engine=FakeEngine("small"),
        load_s=0.5,
        clock=clock,
        on_change=lambda: changes.append("changed"),
    )
    return holder, loader, clock, changes


def test_the_start_up_load_is_reported() -> None:
    holder, loader, _clock, _changes = _holder()
    state = holder.state()
    assert state.loaded
    assert state.loads == 1
    assert state.last_load_ms == 500.0
    assert state.idle_unload_s == 60.0
    assert not loader.loaded  # the start-up engine was handed in, not loaded again


def test_idle_unload_only_after_the_idle_time_then_reload_on_demand() -> None:
    holder, loader, clock, changes = _holder(idle_unload_s=60.0, delay_s=0.05)
    clock.now += 59.0
    assert not holder.unload_if_idle()
    assert holder.loaded
    clock.now += 2.0
    assert holder.unload_if_idle()
    assert not holder.loaded
    assert not holder.state().loaded
    assert holder.provider == "cpu"  # still known for status and telemetry
    assert changes == ["changed"]
    assert not holder.unload_if_idle()  # nothing left to unload
    engine = holder.get()  # the next request loads it again
    assert engine.name == "small"
    assert loader.loaded == ["small"]
    state = holder.state()
    assert state.loaded
    assert state.loads == 2
    assert state.last_load_ms is not None
    assert state.last_load_ms >= 50.0  # the measured reload, not the start-up one
    assert changes == ["changed", "changed"]
    assert holder.get() is engine  # no second load while it is in memory
    assert loader.loaded == ["small"]


def test_use_resets_the_idle_timer() -> None:
    holder, _loader, clock, _changes = _holder(idle_unload_s=60.0)
    clock.now += 50.0
    holder.get()
    clock.now += 50.0
    holder.touch()
    clock.now += 50.0
    assert not holder.unload_if_idle()
    clock.now += 11.0
    assert holder.unload_if_idle()


def test_a_pinned_model_is_never_unloaded() -> None:
    holder, _loader, clock, _changes = _holder(idle_unload_s=1.0, pinned=True)
    clock.now += 10_000.0
    assert not holder.unload_if_idle()
    assert holder.loaded
    assert holder.state().pinned
    holder.set_pinned(False)
    assert holder.unload_if_idle()


def test_zero_or_none_means_never_unload() -> None:
    for never in (0.0, None):
        holder, _loader, clock, _changes = _holder(idle_unload_s=never)
        clock.now += 1e9
        assert not holder.unload_if_idle()
        assert holder.state().idle_unload_s is None


def test_swap_then_restore() -> None:
    holder, _loader, _clock, changes = _holder()
    new_spec = ModelSpec(name="big", path=Path("/models/big-abc"), version="abc", cache_key="k")
    previous = holder.swap(new_spec, FakeEngine("big", provider="cuda"), load_s=1.25)
    assert previous[0] == SPEC
    assert previous[1] is not None
    assert previous[1].name == "small"
    assert holder.name == "big"
    assert holder.get().name == "big"
    assert holder.provider == "cuda"
    state = holder.state()
    assert state.version == "abc"
    assert state.last_load_ms == 1250.0
    assert state.loads == 2
    holder.restore(*previous)
    assert holder.name == "small"
    assert holder.get().name == "small"
    assert holder.state().version is None
    assert len(changes) == 2


def test_swap_onto_an_unloaded_model_returns_none_as_the_old_engine() -> None:
    holder, _loader, clock, _changes = _holder(idle_unload_s=1.0)
    clock.now += 5
    assert holder.unload_if_idle()
    _spec, old = holder.swap(SPEC, FakeEngine("small2"), load_s=0.1)
    assert old is None
    assert holder.loaded
