"""setup.cfg holds the metadata; this adds the recordings of real virsh to the build."""

import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithRecordings(build_py):
    """Copies fixtures/ (*.yaml and the hosts/*.xml they were recorded from) into
    virtguests/testing/recordings/ of the build, where recordings.packaged_dir() finds
    them. fixtures/ stays the one copy in the source tree (tools/record_fixtures.py
    writes it; tests, docs and code name it); an editable install reads it in place."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        found = sorted(glob.glob(os.path.join("fixtures", "*.yaml")))
        if not found:
            raise SystemExit("setup.py: no recordings (fixtures/*.yaml) to build with")
        target = os.path.join(self.build_lib, "virtguests", "testing", "recordings")
        for path in found + sorted(glob.glob(os.path.join("fixtures", "hosts", "*.xml"))):
            dest = os.path.join(target, os.path.relpath(path, "fixtures"))
            self.mkpath(os.path.dirname(dest))
            self.copy_file(path, dest, preserve_mode=False)


setup(cmdclass={"build_py": BuildPyWithRecordings})
