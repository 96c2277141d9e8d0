import sys

from fastsasrec.cli import main

sys.exit(main())
