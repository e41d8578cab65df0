import sys

from cprfl_lib.cli import main

sys.exit(main())
