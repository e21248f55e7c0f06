"""HTTP/2 for clients (issue 20): ALPN h2 over TLS and prior-knowledge h2c."""
