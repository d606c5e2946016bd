"""htex demo: a few thousand tasks on local workers, with the rate.

Run with ``bash scripts/demo.sh`` (sets up .venv first) or ``python examples/demo.py``.
"""

from __future__ import annotations

import math
import tempfile
import time

from htex import HighThroughputExecutor, LocalProvider


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def main() -> None:
    run_dir = tempfile.mkdtemp(prefix="htex-demo-")
    t0 = time.perf_counter()
    with HighThroughputExecutor(
        label="demo",
        max_workers=2,
        prefetch_capacity=64,
        provider=LocalProvider(init_blocks=1, max_blocks=1),
        run_dir=run_dir,
    ) as ex:
        first = ex.submit(pow, {}, 2, 10)
        print(f"pow(2, 10) = {first.result()}   (first result {time.perf_counter() - t0:.2f} s after start)")

        n = 5000
        t1 = time.perf_counter()
        futures = [ex.submit(is_prime, {}, i) for i in range(n)]
        primes = [i for i, f in enumerate(futures) if f.result()]
        elapsed = time.perf_counter() - t1
        print(f"{n} tasks in {elapsed:.2f} s: {n / elapsed:,.0f} tasks/s on {ex.connected_workers} workers")
        print(f"{len(primes)} primes below {n}; the last five: {primes[-5:]}")

        squares = list(ex.map(lambda x: x * x, range(10)))  # a lambda travels by value
        print(f"map(lambda x: x * x, range(10)) = {squares}")

        try:
            ex.submit(math.sqrt, {}, -1).result()
        except ValueError as exc:
            print(f"a failing task raises on the client: ValueError({exc})")
    print(f"shut down cleanly; logs in {run_dir}")


if __name__ == "__main__":
    main()
