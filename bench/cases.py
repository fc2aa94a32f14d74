"""The benchmark cases, after the paper's Table 3, scaled to a 2-core machine.

Loads are fixed numbers chosen from this machine's capacity (4 Python demo
workers on 2 cores, the load generator on the same cores), not from any mode's
results: light leaves most of the CPU idle, heavy saturates it."""

from dataclasses import dataclass, field

MODES = ("exclusive", "reuseport", "hermes")
PEERS = ("exclusive", "reuseport")
WORKERS = 4

# cpu_ms costs with weights; the Lua script mixed_close.lua holds case 2's.
CASE4_MIX = "/work?cpu_ms=5@50,/work?cpu_ms=10@40,/work?cpu_ms=50@10"     # mean 11.5 ms
FAULT_MIX = "/@9,/work?cpu_ms=5@1"


@dataclass
class Case:
    key: str
    title: str
    gen: str                      # "wrk" (closed loop) or "open" (fixed arrival rate)
    what: str                     # how the load is made, for the report
    loads: dict                   # light/medium/heavy -> wrk connections or requests/s
    lua: str = ""
    mix: str = ""
    fault: str = ""               # "stop" or "kill"
    fault_at: float = 0.0         # seconds into the run
    hang_s: float = 0.0
    durations: dict = field(default_factory=dict)   # quick/full -> seconds


def all_cases():
    return [
        Case("1", "High connection rate, cheap requests", "wrk",
             "wrk, one new connection per request (`Connection: close`), GET / "
             "(sub-millisecond); load = concurrent connections",
             {"light": 4, "medium": 16, "heavy": 64}, lua="cheap_close",
             durations={"quick": 3, "full": 6}),
        Case("2", "High connection rate, expensive requests", "wrk",
             "wrk, one new connection per request, /work?cpu_ms= 1 (60%), 5 (30%), "
             "20 (10%) (mean 4.6 ms CPU, Lua mix); load = concurrent connections",
             {"light": 4, "medium": 16, "heavy": 64}, lua="mixed_close",
             durations={"quick": 3, "full": 6}),
        Case("3", "Long-lived keep-alive connections, cheap requests", "wrk",
             "wrk, keep-alive connections opened once, GET /; load = connections",
             {"light": 16, "medium": 64, "heavy": 256}, lua="cheap_keepalive",
             durations={"quick": 3, "full": 6}),
        Case("4", "Low connection rate, expensive requests", "open",
             "open loop (own generator), one new connection per request at a fixed "
             "arrival rate, /work?cpu_ms= 5 (50%), 10 (40%), 50 (10%) (mean 11.5 ms); "
             "load = requests/s",
             {"light": 20, "medium": 50, "heavy": 90}, mix=CASE4_MIX,
             durations={"quick": 4, "full": 8}),
        Case("H", "One worker hung (SIGSTOP) mid-run", "open",
             "open loop, 300 new connections/s, GET / (90%) and /work?cpu_ms=5 (10%); "
             "one worker SIGSTOPped mid-run, then SIGCONTed",
             {"medium": 300}, mix=FAULT_MIX, fault="stop",
             durations={"quick": 6, "full": 12}),
        Case("C", "One worker killed (SIGKILL) mid-run", "open",
             "open loop, 300 new connections/s, GET / (90%) and /work?cpu_ms=5 (10%); "
             "one worker SIGKILLed mid-run (the launcher replaces it)",
             {"medium": 300}, mix=FAULT_MIX, fault="kill",
             durations={"quick": 5, "full": 10}),
    ]


def fault_times(case, quick):
    """(fault_at, hang_s) for the H and C cases."""
    if case.fault == "stop":
        return (1.5, 3.0) if quick else (3.0, 5.0)
    if case.fault == "kill":
        return (1.5, 0.0) if quick else (3.0, 0.0)
    return (0.0, 0.0)
