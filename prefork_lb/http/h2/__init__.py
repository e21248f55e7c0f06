"""HTTP/2 for clients (issue 20): ALPN h2 over TLS and prior-knowledge h2c.

- ``mapping.py`` (sans-IO): stream headers -> the pipeline's ``RequestHead``; the
  pipeline's HTTP/1.1 response bytes -> an HTTP/2 header list and DATA.
- ``guard.py`` (sans-IO): per-connection accounting of hostile patterns (floods, rapid
  reset); answers "ok" or the GOAWAY code that ends the connection.
- ``stream.py`` (gevent): one stream as the pipeline's client (``http/client.py``'s Client).
- ``connection.py`` (gevent): the connection shell: frames in, data_to_send out, one
  greenlet per stream.
"""
