#!/usr/bin/env python3
"""Latency of GET /v1/stories/{id} with a cold and a warm cache (stdlib only).

Usage: bench/api_latency.py --port 9480 --stories 10000 --samples 2000 --key-prefix bench:
Cold: the story's Valkey entry is deleted before the timed request (the DEL is not timed),
so the view is read from Neo4j. Warm: the same request again, served from Valkey.
"""
import argparse, http.client, json, random, socket, statistics, time

def valkey_del(host, port, key):
    s = socket.create_connection((host, port))
    s.sendall(f"*2\r\n$3\r\nDEL\r\n${len(key)}\r\n{key}\r\n".encode())
    s.recv(64)
    s.close()

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9480)
    ap.add_argument("--stories", type=int, default=10000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--key-prefix", default="bench:")
    ap.add_argument("--valkey-port", type=int, default=6379)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    conn = http.client.HTTPConnection("127.0.0.1", a.port)
    cold, warm, sources = [], [], {}
    for _ in range(a.samples):
        sid = f"US-{rnd.randint(1, a.stories):04d}"
        valkey_del("127.0.0.1", a.valkey_port, f"{a.key_prefix}context:{sid}")
        for bucket in (cold, warm):
            t0 = time.perf_counter()
            conn.request("GET", f"/v1/stories/{sid}")
            r = conn.getresponse()
            body = r.read()
            bucket.append((time.perf_counter() - t0) * 1000)
            assert r.status == 200, (sid, r.status, body[:200])
            src = json.loads(body)["source"]
            sources[src] = sources.get(src, 0) + 1
    out = {}
    for name, xs in (("cold", cold), ("warm", warm)):
        out[name] = {"p50_ms": round(pct(xs, 50), 2), "p99_ms": round(pct(xs, 99), 2),
                     "max_ms": round(max(xs), 2), "mean_ms": round(statistics.mean(xs), 2), "n": len(xs)}
    out["sources"] = sources
    print(json.dumps(out, indent=2))

if __name__ == "__main__":
    main()
