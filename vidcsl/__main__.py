import sys

from vidcsl.cli import main

sys.exit(main())
