#!/usr/bin/env python3
"""Writes the Redis protocol that seeds N machines the way the machine agent's
publisher writes them (SET kiln:machine:<id> <status> PX ttl, ZADD
kiln:machines) and one worker per machine the way a worker registers (SET
kiln:worker:<id> <record> PX ttl, ZADD kiln:workers). Pipe it into
`redis-cli --pipe`. Jobs are submitted by `kiln submit --count` (the broker's
own script), not here.

usage: monitor_render.py MACHINES TTL_MS > seed.resp
"""
import json
import sys
import time


def resp(*args):
    out = [f"*{len(args)}\r\n"]
    for a in args:
        b = str(a).encode()
        out.append(f"${len(b)}\r\n{b.decode()}\r\n")
    return "".join(out)


def status(machine_id, i, now):
    services = [
        {"name": f"comfyui-gpu{g}", "state": "running", "pid": 1000 + g, "pgid": 1000 + g,
         "uptime_ms": 3600000, "restarts": i % 3, "failures": 0, "ready": True,
         "last_exit": None, "rss_mb": 2048.0, "cpu_pct": 12.5, "oneshot": False,
         "last_error": None}
        for g in range(2)
    ] + [
        {"name": f"worker-gpu{g}", "state": "starting" if i % 10 == 0 else "running",
         "pid": 2000 + g, "pgid": 2000 + g, "uptime_ms": 3600000, "restarts": 0,
         "failures": 0, "ready": i % 10 != 0, "last_exit": None, "rss_mb": 40.0,
         "cpu_pct": 1.0, "oneshot": False, "last_error": None}
        for g in range(2)
    ]
    gpus = [{"index": g, "name": "NVIDIA RTX 4090", "uuid": f"GPU-{i:04d}-{g}",
             "memory_total_mb": 24564, "memory_used_mb": 1000 * ((i + g) % 24),
             "utilization_pct": (i * 7 + g * 13) % 100, "temperature_c": 60} for g in range(2)]
    return {"machine_id": machine_id, "machine_type": "gpu", "state": "ready",
            "services": services, "gpus": gpus, "gpu_source": "nvml",
            "started_at": now - 3600000, "updated_at": now}


def main():
    machines, ttl_ms = int(sys.argv[1]), int(sys.argv[2])
    now = int(time.time() * 1000)
    out = sys.stdout
    for i in range(machines):
        mid = f"bench-{i:03d}"
        out.write(resp("SET", f"kiln:machine:{mid}", json.dumps(status(mid, i, now)), "PX", ttl_ms))
        out.write(resp("ZADD", "kiln:machines", now, mid))
        wid = f"{mid}-worker-gpu0"
        worker = {"id": wid, "machine_id": mid, "services": ["simulation"],
                  "capabilities": {}, "concurrency": 2, "busy": 0, "pid": 3000 + i,
                  "host": mid, "started_at": now - 3600000, "seen_at": now,
                  "active_windows": "", "claiming": True}
        out.write(resp("SET", f"kiln:worker:{wid}", json.dumps(worker), "PX", ttl_ms))
        out.write(resp("ZADD", "kiln:workers", now, wid))


if __name__ == "__main__":
    main()
