#!/usr/bin/env python3
"""Where a kiln respawn's time goes, from `perf script` output of a trace
taken with bench/respawn_trace.sh (sched, signal and syscall tracepoints on
CLOCK_MONOTONIC, `perf record -k mono`) and the probes' own start records.

  respawn_timeline.py PERF_SCRIPT.txt AGENT_PID STARTS_DIR

Prints, per kill and as medians, the time (ms) of each step: the kill ->
the victim's exit (it waits for a CPU) -> the agent awake (epoll returns)
-> waitpid -> the clone of the new child -> its go byte sent -> the child
on a CPU -> its execve done -> the probe's main (its own record)."""
import os
import re
import statistics
import sys

text, agent, starts = sys.argv[1], int(sys.argv[2]), sys.argv[3]
line_re = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
events = []
for raw in open(text, errors="replace"):
    m = line_re.match(raw)
    if m:
        events.append((float(m.group(4)), int(m.group(2)), int(m.group(3)), m.group(5), m.group(6)))
mains = {}
for name in os.listdir(starts):
    for row in open(os.path.join(starts, name)):
        pid, mono = row.split()[:2]
        mains[int(pid)] = int(mono) / 1e9

def first(after, pred):
    for e in events:
        if e[0] >= after and pred(e):
            return e
    return None

steps = ["victim exits", "agent awake", "waitpid", "clone", "go byte sent", "child on a CPU",
         "execve done", "probe main"]
rows = []
for t, pid, tid, ev, rest in events:
    if ev != "syscalls:sys_enter_kill" or pid == agent or "sig: 0x00000009" not in rest:
        continue
    victim = int(re.search(r"pid: (0x[0-9a-f]+)", rest).group(1), 16)
    exit_e = first(t, lambda e: e[3] == "sched:sched_process_exit" and e[1] == victim)
    awake = exit_e and first(exit_e[0], lambda e: e[2] == agent and e[3] == "syscalls:sys_exit_epoll_wait")
    reaped = awake and first(awake[0], lambda e: e[2] == agent and e[3] == "syscalls:sys_exit_wait4")
    fork = reaped and first(reaped[0], lambda e: e[2] == agent and e[3] == "sched:sched_process_fork")
    if not fork:
        continue
    child = int(re.search(r"child_pid=(\d+)", fork[4]).group(1))
    go = first(fork[0], lambda e: e[2] == agent and e[3] == "syscalls:sys_enter_sendto")
    on_cpu = go and first(go[0], lambda e: e[3] == "sched:sched_switch" and f"next_pid={child} " in e[4])
    execd = first(fork[0], lambda e: e[3] == "sched:sched_process_exec" and e[1] == child)
    if not (go and on_cpu and execd and child in mains):
        continue
    marks = [t, exit_e[0], awake[0], reaped[0], fork[0], go[0], on_cpu[0], execd[0], mains[child]]
    rows.append([(b - a) * 1000 for a, b in zip(marks, marks[1:])] + [(marks[-1] - t) * 1000])

print("%-16s" % "step (ms)" + "".join("%9s" % ("#%d" % (i + 1)) for i in range(len(rows))) + "   median")
for k, name in enumerate(steps + ["total"]):
    vals = [r[k] for r in rows]
    print("%-16s" % name + "".join("%9.3f" % v for v in vals) + "%9.3f" % statistics.median(vals))
