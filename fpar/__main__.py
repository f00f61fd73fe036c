import sys

from fpar.cli import main

sys.exit(main())
