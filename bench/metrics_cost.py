"""What the per-request serving metrics cost (serving/metrics.py): IngressMetrics.observe (a counter
and a histogram through ray.serve.metrics) against an empty call, in alternating rounds, on a local
Ray cluster of 1 CPU. Prints microseconds per call; the load average is recorded (bench/machine.py).

    python bench/metrics_cost.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import finish, quiet_start  # bench/machine.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    machine = quiet_start()
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    from modelfoundry.serving.metrics import IngressMetrics

    metrics = IngressMetrics()

    def none(*_: object) -> None:
        return None

    timings: dict[str, list[float]] = {"observe": [], "empty call": []}
    for r in range(args.rounds):
        order = [("observe", metrics.observe), ("empty call", none)]
        for name, fn in order if r % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn("cnn-digits", "3", "predict", 200, 0.001)
            timings[name].append((time.perf_counter() - t0) / args.calls * 1e6)
    ray.shutdown()
    for name, us in timings.items():
        print(f"{name:11} {statistics.median(us):7.2f} us per call (rounds: {', '.join(f'{u:.2f}' for u in us)})")
    finish(machine)


if __name__ == "__main__":
    main()
