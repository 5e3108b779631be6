"""Running a coroutine from a test, whatever holds the test thread's event loop."""

import asyncio
import concurrent.futures


def run_async(coro):
    """asyncio.run(coro) on a thread of its own: the session's browser (Playwright's sync API)
    holds the main thread's event loop once a page test has run, and asyncio.run refuses to
    start inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
