import sys

from hark.cli.main import main

sys.exit(main())
