"""Tools of the checkout, not of the device: ``python -m tools.demo``, ``tools.bench``, ``tools.soak``.

They run from a checkout (``make demo``, ``make bench``, ``make soak``) and use its layout (demo/, bench/,
../shared); ``apt_ensure.sh`` installs the Debian packages the make targets need. The installed package
holds only ``edge`` and ``trainer`` (pyproject.toml), so none of this reaches a device, and ``edge`` never
imports from here (a test checks it).
"""
