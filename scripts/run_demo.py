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
DEMO_CERT = "demo-https"  # conf/demo-https.toml: <prefix>/demo-https.crt and .key


def ensure_demo_certificate(prefix: str) -> str:
    """The demo's self-signed certificate (localhost, 127.0.0.1), made once in ``prefix``
    with the openssl CLI; its path. Never committed: each checkout makes its own."""
    crt = os.path.join(prefix, DEMO_CERT + ".crt")
    key = os.path.join(prefix, DEMO_CERT + ".key")
    if os.path.exists(crt) and os.path.exists(key):
        return crt
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", crt, "-days", "365", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return crt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = [c for c in args.command if c != "--"]
    try:
        crt = ensure_demo_certificate(args.prefix)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"cannot make the demo's self-signed certificate with openssl: {e}", file=sys.stderr)
        return 1
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
    print(f"and https://127.0.0.1:8443/ (self-signed: curl --cacert {crt} https://localhost:8443/)")
    print("dashboard http://127.0.0.1:8081/dashboard, API http://127.0.0.1:8081/api/9/http/upstreams,")
    print("metrics http://127.0.0.1:8081/metrics, terminal: .venv/bin/prefork-lb top")
    print(f"logs: {args.prefix}/access.log, {args.prefix}/error.log; Ctrl-C to stop (graceful)")
    print(f"reload: .venv/bin/prefork-lb -s reload -c conf/demo-https.toml -p {args.prefix}")
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
