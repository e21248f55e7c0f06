"""`make run`: two demo backends plus prefork-lb in the foreground; Ctrl-C stops all three.

Usage: run_demo.py --prefix DIR -- PREFORK_LB_COMMAND...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = [c for c in args.command if c != "--"]
    backend = os.path.join(HERE, "demo_backend.py")
    backends = [
        subprocess.Popen(
            [sys.executable, backend, "--port", str(port), "--name", name], stdout=subprocess.DEVNULL
        )
        for port, name in ((9001, "backend-a"), (9002, "backend-b"))
    ]
    time.sleep(0.3)
    print("demo backends on 127.0.0.1:9001 and 127.0.0.1:9002")
    print("prefork-lb on http://127.0.0.1:8080/  (try: curl http://127.0.0.1:8080/ twice)")
    print("dashboard http://127.0.0.1:8081/dashboard, API http://127.0.0.1:8081/api/9/http/upstreams,")
    print("metrics http://127.0.0.1:8081/metrics, terminal: .venv/bin/prefork-lb top")
    print(f"logs: {args.prefix}/access.log, {args.prefix}/error.log; Ctrl-C to stop")
    lb = subprocess.Popen(command)
    try:
        return lb.wait()
    except KeyboardInterrupt:
        lb.send_signal(signal.SIGQUIT)
        return lb.wait()
    finally:
        for b in backends:
            b.terminate()
        for b in backends:
            b.wait()


if __name__ == "__main__":
    sys.exit(main())
