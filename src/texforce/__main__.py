import sys

from texforce.cli.main import main

sys.exit(main())
