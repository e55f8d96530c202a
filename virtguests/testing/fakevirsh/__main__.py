"""``python -m virtguests.testing.fakevirsh ARGS``: the fake virsh."""

import sys

from virtguests.testing.fakevirsh.main import console_main

sys.exit(console_main())
