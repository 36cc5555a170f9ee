"""Sub-commands of ``npgrad`` beyond ``gradcheck``; each registers its parser."""

from __future__ import annotations

REGISTRARS: list = []
