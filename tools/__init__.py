"""Developer tooling (not shipped): the scripts of ``make bench|soak|fixtures|demo`` and
what they share with the tests (the reference runner, real-libvirtd helpers, the
property scenarios).  Tests may import it; it imports nothing from ``tests``."""
