import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still starting
    sys.exit(130)

sys.exit(main())
