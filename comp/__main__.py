import sys

from comp.run import main

sys.exit(main())
