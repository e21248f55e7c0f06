"""Build of the optional C extension; everything else is in pyproject.toml.

``prefork_lb/balance/_pickloop.c`` (nginx's round robin and least_conn loops over the zone
words, and the zone's futex lock) is compiled by ``pip install`` (also ``pip install -e``) with the machine's C
compiler. ``optional=True``: without a compiler or Python headers the build prints a
warning and the install goes on; the balancers then use their pure-Python loops
(``prefork_lb/balance/native.py``; ``PREFORK_LB_PURE=1`` forces those at run time) and
the zone locks with ``flock`` (``prefork_lb/zone/zone.py``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "prefork_lb.balance._pickloop",
            ["prefork_lb/balance/_pickloop.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
