"""A student's file that calls sys.exit at import (a leftover of a script)."""

import sys

sys.exit(3)
