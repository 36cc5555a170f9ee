"""A student's file that ends the interpreter at import, with status 0 (it must not look like a pass)."""

import os

os._exit(0)
