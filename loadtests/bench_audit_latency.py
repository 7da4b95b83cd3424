"""Audit latency: the p99 latency the durable audit writer adds to a request at half the gateway's
maximum throughput (target <= 5 ms).

Built on the hot-path benchmark (loadtests/bench.py, whose functions it runs): the same throwaway
database and seeded demo, the gateway as shipped (`gateway serve` pinned to --server-cpu, wrk on
--load-cpu), the same bare Starlette app serving the bytes the gateway returned (bench_server.py bare),
the same workload: core, a member's `GET /v1/datasets/{dataset}` (authenticated, licensed, metered,
durably audited; no record read).

1. The gateway's maximum throughput: wrk, as many requests as it answers, 64 connections (median of
   --repeat runs of --seconds).
2. Both servers driven at the same constant rate, --fraction (0.5) of that maximum, with
   --connections (16) connections: wrk paced by loadtests/wrk_report.lua's delay() (one schedule for
   all connections). The gateway's and bare Starlette's runs alternate, --repeat each; medians kept.
   The achieved rate is checked against the target (within 10 %).
3. The p99 the gateway adds, gateway p99 - bare p99 at that rate: everything the gateway does on top
   of the same server and framework (authentication, licence check, metering and the durable audit
   commit), so an upper bound on what the audit writer adds, the figure the target is about. Beside
   it the writer's own figures from the gateway's /metrics over the paced runs: group commits per
   second, events per commit, and the time of one group's write and commit
   (gateway_audit_commit_seconds: mean, p50 and p99 estimated from its buckets). A request waits for
   its group's commit, and for the end of the one in progress when the writer is busy.

Figures go to stdout and loadtests/results/audit_latency.json (every wrk run included). Loopback only;
every wrk run stops after --seconds; the database and servers are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from loadtests.bench import (
    CORE_ROUTE,
    Driver,
    Server,
    add_run_options,
    baseline_command,
    capture,
    find_wrk,
    free_port,
    gateway_command,
    quick,
    run_and_report,
    run_settings,
    running,
    save_answers,
    seeded_bench,
    start_server,
    summarise,
    wait_ready,
)
from loadtests.common import RESULTS_DIR, machine_info, say

TARGET_P99_EXTRA_MS = 5.0
RATE_TOLERANCE = 0.10  # the achieved rate must be within 10 % of the target for the figures to count
MAX_CONNECTIONS = 64

EXAMPLES = """examples:
  .venv/bin/python -m loadtests.bench_audit_latency            # medians of 3 x 10 s, about 3 minutes
  .venv/bin/python -m loadtests.bench_audit_latency --quick    # one 3 s run each, about 1 minute
  .venv/bin/python -m loadtests.bench_audit_latency --seconds 5 --repeat 3 --connections 32
  .venv/bin/python -m loadtests.bench_audit_latency --rate 2000   # a given rate, no maximum measured
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_audit_latency", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(parser)
    parser.add_argument("--connections", type=int, default=16,
                        help="connections of the paced runs (default 16); they must exceed rate x latency")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="the rate, as a share of the gateway's maximum throughput (default 0.5)")
    parser.add_argument("--rate", type=float,
                        help="drive both servers at this many requests/s instead (the maximum is not measured)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "audit_latency.json")
    return quick(parser.parse_args(argv))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    wrk = find_wrk(args)
    results: dict[str, Any] = {
        "benchmark": "audit_latency", "machine": machine_info(),
        "settings": {**run_settings(args), "workload": f"core: GET {CORE_ROUTE}", "connections": args.connections,
                     "max_connections": MAX_CONNECTIONS, "fraction": args.fraction, "rate": args.rate,
                     "pacing": "wrk_report.lua delay(): one schedule for all connections"}}
    async with seeded_bench(args, wrk, "lpd-auditlatency-") as bench:
        results["database"] = bench.db.describe()
        driver, key = bench.driver, bench.key
        say(f"gateway (gateway serve) and bare Starlette, both pinned to core {args.server_cpu}")
        gateway = start_server("gateway", gateway_command("serve"), bench.env, bench.port, args.server_cpu,
                               bench.logs)
        with running(gateway):
            await wait_ready(gateway, "/readyz")
            bench.pin_postgres()
            answers_file = save_answers(bench, await capture(gateway, key, bench.paths))
            # Both run at once (on their own ports) so that their runs can alternate: drift in the
            # machine's other load then falls on both. The idle one does nothing meanwhile.
            port = free_port()
            bare = start_server("bare", baseline_command("bare", answers_file),
                                {**bench.env, "GATEWAY_PORT": str(port)}, port, args.server_cpu, bench.logs)
            with running(bare):
                await wait_ready(bare, bench.paths[CORE_ROUTE])
                servers = {"gateway": gateway, "bare": bare}
                urls = {name: bench.urls_of(server)["core"] for name, server in servers.items()}
                for name in servers:  # warm-up, not counted (as bench.py's)
                    await asyncio.to_thread(driver.wrk_once, urls[name], key, MAX_CONNECTIONS, 2)
                if args.rate:
                    rate = args.rate
                else:
                    say(f"  gateway's maximum: core at {MAX_CONNECTIONS} connections")
                    results["gateway_max"] = await driver.measure(gateway, urls["gateway"], key, MAX_CONNECTIONS,
                                                                  metrics=True)
                    rate = args.fraction * results["gateway_max"]["requests_per_s"]
                results["target_requests_per_s"] = round(rate, 1)
                results.update(await paced(driver, servers, urls, key, rate, args.connections, args.repeat))
    results["summary"] = summary(results)
    return results


async def paced(driver: Driver, servers: dict[str, Server], urls: dict[str, str], key: str, rate: float,
                connections: int, repeat: int) -> dict[str, Any]:
    """`repeat` paced runs of each server, alternating; the medians (summarise) of each one's runs."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for i in range(repeat):
        for name, server in servers.items():
            say(f"  {name} at {rate:,.0f} requests/s, {connections} connections (run {i + 1} of {repeat})")
            figure = await driver.measure(server, urls[name], key, connections, repeat=1,
                                          metrics=name == "gateway", rate=rate)
            runs[name] += figure["runs"]
    return {name: summarise(name_runs) for name, name_runs in runs.items()}


# -- figures ----------------------------------------------------------------------------------------

def summary(results: dict[str, Any]) -> dict[str, Any]:
    rate = results["target_requests_per_s"]
    gateway, bare = results["gateway"], results["bare"]
    out: dict[str, Any] = {"target_requests_per_s": rate}
    deviations = {}
    for name in ("gateway", "bare"):
        out[f"{name}_requests_per_s"] = results[name]["requests_per_s"]
        deviations[name] = round(results[name]["requests_per_s"] / rate - 1, 3)
        out[f"{name}_runs_off_rate"] = sum(abs(r["requests_per_s"] / rate - 1) > RATE_TOLERANCE
                                           for r in results[name]["runs"])
    out["rate_deviation"] = deviations
    out["rate_achieved"] = all(abs(d) <= RATE_TOLERANCE for d in deviations.values())
    for p in ("p50", "p99", "p999"):
        out[f"{p}_extra_ms"] = round(gateway["latency_ms"][p] - bare["latency_ms"][p], 3)
    out["audit"] = gateway.get("audit")
    if "gateway_max" in results:
        out["gateway_max_requests_per_s"] = results["gateway_max"]["requests_per_s"]
    out["targets"] = {f"p99 added at half the maximum throughput <= {TARGET_P99_EXTRA_MS:g} ms":
                      out["p99_extra_ms"] <= TARGET_P99_EXTRA_MS}
    return out


def _num(value: float | None, spec: str = ",.2f") -> str:
    return "" if value is None else format(value, spec)


def _slowest(audit: dict[str, Any]) -> str:
    if "commit_ms_max_bound" not in audit:
        return ""
    bound = audit["commit_ms_max_bound"]
    return "over the largest bucket" if bound is None else f"<= {bound:g} ms"


def report(results: dict[str, Any]) -> str:
    out, settings = results["summary"], results["settings"]
    rate = out["target_requests_per_s"]
    lines = [(f"Audit latency: core (GET {CORE_ROUTE}) at a constant rate, {settings['connections']} connections, "
              f"median of {settings['repeat']} x {settings['seconds']:g} s per server")]
    if "gateway_max" in results:
        top = results["gateway_max"]
        lines.append(f"gateway's maximum at {MAX_CONNECTIONS} connections: {top['requests_per_s']:,.0f} requests/s "
                     f"(p50 {top['latency_ms']['p50']:.2f} ms) -> target rate {settings['fraction']:g} x = "
                     f"{rate:,.0f} requests/s")
    else:
        lines.append(f"target rate given: {rate:,.0f} requests/s (the maximum was not measured)")
    lines += ["", "| server | target req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, name in (("bare Starlette", "bare"), ("gateway", "gateway")):
        fig, lat = results[name], results[name]["latency_ms"]
        lines.append(f"| {label} | {rate:,.0f} | {fig['requests_per_s']:,.0f} ({out['rate_deviation'][name]:+.1%}) | "
                     f"{lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} | {fig['cpu_us_per_request']:.0f} | "
                     f"{fig['errors'] or ''} |")
    lines.append(f"| gateway - bare | | | {out['p50_extra_ms']:+.2f} | **{out['p99_extra_ms']:+.2f}** | "
                 f"{out['p999_extra_ms']:+.2f} | | |")
    audit = out.get("audit") or {}
    lines += ["", "the gateway's audit writer over the paced runs (its /metrics; batch sizes also by xmin):",
              ("| group commits/s | events per commit | commit time per group, mean ms | p50 ms | p99 ms | "
               "slowest (bucket) | commits > 10 ms |"),
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
              (f"| {_num(audit.get('commits_per_s'), ',.0f')} | {_num(audit.get('histogram_mean'), '.1f')} "
               f"(xmin: mean {_num(audit.get('events_per_commit_mean'), '.1f')}, "
               f"max {_num(audit.get('events_per_commit_max'), '.0f')}) | {_num(audit.get('commit_ms_mean'))} | "
               f"~{_num(audit.get('commit_ms_p50'))} | ~{_num(audit.get('commit_ms_p99'))} | "
               f"{_slowest(audit)} | {_num(audit.get('commits_over_10ms'), '.0f')} |")]
    if not audit.get("histogram_observed", True) or audit.get("commit_ms_mean") is None:
        lines.append("(the gateway's /metrics showed no gateway_audit_commit_seconds observations)")
    lines.append("(p50/p99 of the commit time are estimated from the histogram's buckets: 0.5, 1, 2, 5, 10, 20 ms…)")
    lines.append("")
    if not out["rate_achieved"]:
        lines.append(f"WARNING: an achieved rate is more than {RATE_TOLERANCE:.0%} off the target "
                     f"({', '.join(f'{k} {v:+.1%}' for k, v in out['rate_deviation'].items())}): the latencies "
                     "were not measured at the intended load (too few --connections for rate x latency, or the "
                     "machine too busy); compare with care.")
    for name in ("gateway", "bare"):
        if out[f"{name}_runs_off_rate"]:
            lines.append(f"note: {out[name + '_runs_off_rate']} {name} run(s) more than {RATE_TOLERANCE:.0%} "
                         "off the target rate (each run is in the JSON)")
    for name, met in out["targets"].items():
        verdict = "met" if met else "MISSED"
        if not out["rate_achieved"]:
            verdict += " (rate not achieved)"
        lines.append(f"target {name}: {out['p99_extra_ms']:+.2f} ms (gateway p99 - bare p99: authentication, "
                     f"licence, metering and the durable audit commit; an upper bound on the audit writer's "
                     f"share): {verdict}")
    return "\n".join(lines)


def entry(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), main, report)


if __name__ == "__main__":
    sys.exit(entry())
