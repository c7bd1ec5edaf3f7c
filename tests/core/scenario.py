"""One scenario, run blocking and awaiting: submit, cancel, collect; used by test_sync_async.py,
also in a subprocess with nest_asyncio applied (so it imports nothing from pytest)."""

from __future__ import annotations

from comfynb import Cancelled, Session, as_completed
from comfynb.sim.images import read_params

try:
    from .conftest import FAST, txt2img
except ImportError:  # run as a plain module in a subprocess
    from conftest import FAST, txt2img

SEEDS = range(5)


def blocking(session: Session) -> None:
    jobs = {session.submit(txt2img(seed)): seed for seed in SEEDS}
    extra = session.submit(txt2img(99))
    extra.cancel()
    for job in as_completed(jobs, timeout=30):
        assert read_params(job.result().images[0].data)["seed"] == jobs[job]
    try:
        extra.result(30)
    except Cancelled:
        pass
    assert extra.status in ("cancelled", "success")


async def awaiting(session: Session) -> None:
    jobs = {session.submit(txt2img(seed)): seed for seed in SEEDS}
    extra = session.submit(txt2img(98))
    extra.cancel()
    async for job in as_completed(jobs, timeout=30):
        result = await job
        assert read_params(await result.images[0].fetch())["seed"] == jobs[job]
    # blocking calls still work inside a running loop (the work happens on comfynb's own loop)
    assert read_params(next(iter(jobs)).result(30).images[0].data)
    try:
        await extra
    except Cancelled:
        pass
    report = await session.acheck(next(iter(jobs)).prompt_id)
    assert report["history"] == "success"


def main() -> None:
    """Entry point for the nest_asyncio subprocess."""
    import asyncio

    import nest_asyncio

    nest_asyncio.apply()
    with Session.simulated(**FAST) as session:
        blocking(session)
        asyncio.run(awaiting(session))

    async def inside_loop() -> None:
        async with Session.simulated(**FAST) as session:
            await awaiting(session)
            blocking(session)  # blocking inside a (nested-asyncio) running loop
            # what nest_asyncio is for: re-entering the running loop
            asyncio.get_event_loop().run_until_complete(awaiting(session))

    asyncio.run(inside_loop())
    print("nest_asyncio scenario ok")


if __name__ == "__main__":
    main()
