import sys

from snnl.cli import main

sys.exit(main())
