"""Certificates for the TLS tests, made with the openssl CLI: a test CA, server certificates
(RSA and ECDSA) per name, client certificates. Nothing is committed; keys live in tmp dirs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class Pair:
    cert: Path
    key: Path


class TestCA:
    """A CA in ``directory``; ``issue(name)`` makes a certificate it signs."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "prefork-lb test CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        self._serial = 1
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "2", "-subj", f"/CN={name}",
            cwd=directory,
        )  # fmt: skip

    def issue(self, name: str, kind: str = "rsa", client: bool = False, tag: str = "") -> Pair:
        """A certificate for ``name`` (its CN and, for servers, its DNS SAN)."""
        stem = f"{name}-{kind}{tag}"
        key, csr, crt = (self.dir / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        if kind == "rsa":
            newkey = ["-newkey", "rsa:2048"]
        else:
            newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        subj = f"/O=prefork-lb tests/CN={name}"
        _openssl("req", *newkey, "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subj, cwd=self.dir)
        ext = self.dir / f"{stem}.ext"
        if client:
            ext.write_text("extendedKeyUsage=clientAuth\n")
        else:
            ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
        self._serial += 1
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(self._serial), "-days", "2", "-out", str(crt), "-extfile", str(ext),
            cwd=self.dir,
        )  # fmt: skip
        return Pair(crt, key)
