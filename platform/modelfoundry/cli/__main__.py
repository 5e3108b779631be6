import sys

from modelfoundry.cli import main

sys.exit(main())
