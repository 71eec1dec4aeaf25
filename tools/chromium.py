#!/usr/bin/env python3
"""Where the course finds Chromium for its browser test: $CHROMIUM, else Debian's /usr/bin/chromium.

The one place that says so: tests/test_browser.py reads path(), and .ci/run installs Debian's
chromium package when the path it prints is not there.

    python3 tools/chromium.py        # prints the path
"""
import os

DEFAULT = "/usr/bin/chromium"


def path():
    return os.environ.get("CHROMIUM") or DEFAULT


if __name__ == "__main__":
    print(path())
