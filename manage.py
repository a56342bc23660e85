#!/usr/bin/env python
"""Spoon Feeder's command line: `manage.py run` starts the whole embedded stack."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "spoonfeeder.settings")
    from spoonfeeder.config import ConfigError

    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ConfigError as e:
        # Bad configuration gets one line that says what to do, not a traceback.
        print(f"spoonfeeder: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
