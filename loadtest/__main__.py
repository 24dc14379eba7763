import sys

from loadtest.generator import main

sys.exit(main())
