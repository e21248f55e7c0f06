import sys

from prefork_lb.cli import main

sys.exit(main())
