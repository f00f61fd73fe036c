from fpar.cli import main
import sys

sys.exit(main())
