"""TLS termination: contexts built in the master (``contexts``), what a handshake tells
the variables (``info``), and the non-blocking I/O of a TLS client connection (``io``)."""
