"""The run's slots: the concurrency bound handed out in turns across projects, and the budget."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave.operations.slots import Slots


async def served_order(slots: Slots, queued: dict[str, int], hold: float = 0.001) -> list[str]:
    """Queue each project's requests (in the dict's order) and record who got each slot."""
    order: list[str] = []

    async def one(project: str) -> None:
        async with slots.slot(project):
            order.append(project)
            await asyncio.sleep(hold)

    tasks = [asyncio.create_task(one(p)) for p, n in queued.items() for _ in range(n)]
    await asyncio.gather(*tasks)
    return order


def test_projects_take_turns_instead_of_first_come_first_served():
    order = asyncio.run(served_order(Slots(1), {"big": 50, "a": 2, "b": 2}))
    # The first slot was free; then the turns go round: big, a, b, big, a, b, big, ...
    assert order[:7] == ["big", "big", "a", "b", "big", "a", "b"]
    assert max(i for i, p in enumerate(order) if p != "big") < 8


def test_a_turn_is_a_quantum_of_slots_in_a_row():
    order = asyncio.run(served_order(Slots(1, quantum=3), {"big": 9, "a": 3, "b": 3}))
    assert order == ["big"] + ["big"] * 3 + ["a"] * 3 + ["b"] * 3 + ["big"] * 3 + ["big"] * 2


@settings(max_examples=40, deadline=None)
@given(
    concurrency=st.integers(1, 6),
    quantum=st.integers(1, 4),
    queued=st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 12), min_size=1),
)
def test_never_more_at_once_than_the_bound_and_everyone_is_served(concurrency, quantum, queued):
    slots = Slots(concurrency, quantum=quantum)
    inside = peak = 0

    async def one(project: str) -> None:
        nonlocal inside, peak
        async with slots.slot(project):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            inside -= 1

    async def go() -> None:
        await asyncio.gather(*(one(p) for p, n in queued.items() for _ in range(n)))

    asyncio.run(go())
    assert peak <= concurrency
    assert slots.waiting == 0


def test_a_waiter_cancelled_after_its_slot_was_handed_over_passes_it_on():
    async def go() -> list[str]:
        slots = Slots(1)
        got: list[str] = []

        async def waiter(name: str) -> None:
            async with slots.slot(name):
                got.append(name)

        held = slots.slot("a")
        await held.__aenter__()
        doomed = asyncio.create_task(waiter("b"))
        patient = asyncio.create_task(waiter("c"))
        await asyncio.sleep(0)  # both wait in line
        await held.__aexit__(None, None, None)  # hands the slot to b ...
        doomed.cancel()  # ... cancelled before it could run: c must get the slot
        async with asyncio.timeout(5):  # a lost slot would leave c waiting for ever
            await asyncio.gather(doomed, patient, return_exceptions=True)
        assert slots.waiting == 0
        return got

    assert asyncio.run(go()) == ["c"]


def test_the_budget_counts_requests_and_refuses_past_it():
    slots = Slots(4, budget=2)
    assert [slots.spend(), slots.spend(), slots.spend()] == [True, True, False]
    assert slots.exhausted and slots.spent == 2
    assert not Slots(4).exhausted
