import sys

from sdlib.runner import main

sys.exit(main())
