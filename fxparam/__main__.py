import sys

from fxparam.cli import main

sys.exit(main())
