"""`make run`: two demo backends plus prefork-lb in the foreground; Ctrl-C stops all three
(the master gracefully, with QUIT; the children run in their own process groups so the
terminal's SIGINT, a fast stop for the master, never reaches them).

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
    # Every child in its own process group: the terminal's Ctrl-C (SIGINT to the foreground
    # group) reaches only this script, which then stops the master gracefully with QUIT
    # (SIGINT itself means fast stop to the master, as TERM does; README's signal table).
    backends = [
        subprocess.Popen(
            [sys.executable, backend, "--port", str(port), "--name", name],
            stdout=subprocess.DEVNULL,
            process_group=0,
        )
        for port, name in ((9001, "backend-a"), (9002, "backend-b"))
    ]
    time.sleep(0.3)
    print("demo backends on 127.0.0.1:9001 and 127.0.0.1:9002")
    print("prefork-lb on http://127.0.0.1:8080/  (try: curl http://127.0.0.1:8080/ twice)")
    print("dashboard http://127.0.0.1:8081/dashboard, API http://127.0.0.1:8081/api/9/http/upstreams,")
    print("metrics http://127.0.0.1:8081/metrics, terminal: .venv/bin/prefork-lb top")
    print(f"logs: {args.prefix}/access.log, {args.prefix}/error.log; Ctrl-C to stop (graceful)")
    print(f"reload: .venv/bin/prefork-lb -s reload -c conf/prefork-lb.toml -p {args.prefix}")
    lb = subprocess.Popen(command, process_group=0)
    try:
        return lb.wait()
    except KeyboardInterrupt:
        print("\nCtrl-C: graceful stop (QUIT to the master; in-flight requests finish)")
        lb.send_signal(signal.SIGQUIT)
        return lb.wait()
    finally:
        for b in backends:
            b.terminate()
        for b in backends:
            b.wait()


if __name__ == "__main__":
    sys.exit(main())
