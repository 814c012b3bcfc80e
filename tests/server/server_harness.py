"""Starting and stopping fastinfer-server for the tests, plus the golden cases.

The server listens on 127.0.0.1 port 0 (the kernel picks a free port; the
server prints it), so tests never race for a port and never leave loopback.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

SERVER, GENERATE, SHARED = sys.argv[1], sys.argv[2], sys.argv[3]
MODEL = os.path.join(SHARED, "models", "tinystories-656k")
GOLDEN = os.path.join(SHARED, "golden", "tinystories-656k", "cases")


def skip(reason):
    print(f"FASTINFER_SKIP: {reason}")
    sys.exit(0)


def require_shared():
    if not os.path.isdir(MODEL) or not os.path.isdir(GOLDEN):
        skip(f"{MODEL} or {GOLDEN} missing")


class Server:
    """One fastinfer-server process on a free loopback port."""

    def __init__(self, *extra):
        self.proc = subprocess.Popen(
            [SERVER, "--model", MODEL, "--host", "127.0.0.1", "--port", "0", "--enable-debug-endpoints", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = m.group(1)

    def stop(self, timeout=60):
        """SIGTERM; the server must exit 0 by itself."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("server did not exit after SIGTERM")
        err = self.proc.stderr.read()
        assert rc == 0, f"server exited {rc}: {err}"
        return err

    def http(self, method, path, body=None, raw=None, timeout=60):
        """(status, parsed JSON or text) of one plain HTTP request."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metrics(self):
        """/metrics as {series: value} (histogram buckets keyed with their labels)."""
        status, text = self.http("GET", "/metrics")
        assert status == 200, text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def wait_idle(self, timeout=60):
        """Waits until no request runs or waits; returns the metrics."""
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            if m["fastinfer_requests_running"] == 0 and m["fastinfer_requests_waiting"] == 0:
                return m
            if time.time() > deadline:
                raise AssertionError(f"server still busy after {timeout} s: {m}")
            time.sleep(0.05)

    def assert_pool_whole(self):
        """No sequence holds a block, free + prefix-cached = total, and after
        dropping the prefix cache every block is free."""
        status, kv = self.http("GET", "/debug/kv")
        assert status == 200 and kv["whole"], f"KV pool not whole: {kv}"
        status, kv = self.http("POST", "/debug/drop_prefix_cache")
        assert status == 200 and kv["free_blocks"] == kv["total_blocks"] and kv["invariants_ok"], kv
        return kv


def read_case(path):
    case = {"name": os.path.splitext(os.path.basename(path))[0]}
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#") or ":" not in line:
                continue
            key, value = line.rstrip("\n").split(":", 1)
            case[key] = value[1:] if value.startswith(" ") else value
    case["prompt"] = [int(t) for t in case["prompt"].split()]
    case["continuation"] = [int(t) for t in case.get("continuation", "").split()]
    case["max_new_tokens"] = int(case["max_new_tokens"])
    return case


def golden_cases():
    return [read_case(os.path.join(GOLDEN, f)) for f in sorted(os.listdir(GOLDEN)) if f.endswith(".txt")]


def generate_ids(prompt, max_new_tokens):
    """fastinfer-generate's greedy tokens for a prompt of ids."""
    out = subprocess.run([GENERATE, "--model", MODEL, "--prompt-ids", ",".join(map(str, prompt)),
                          "--max-new-tokens", str(max_new_tokens), "--print-ids"],
                         capture_output=True, text=True, check=True).stdout
    return [int(t) for t in out.split()]


class Checks:
    """Runs named checks, prints one line each, exits 1 if any failed."""

    def __init__(self):
        self.failed = []

    def run(self, name, fn, *args):
        t0 = time.time()
        try:
            fn(*args)
            print(f"ok    {name} ({time.time() - t0:.2f} s)", flush=True)
        except Exception as e:  # report every failure, not just the first
            import traceback
            traceback.print_exc()
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
            self.failed.append(name)

    def finish(self):
        if self.failed:
            print(f"{len(self.failed)} check(s) failed: {', '.join(self.failed)}")
            sys.exit(1)
        print("all checks passed")
