"""A private libvirtd and tiny real guests: shared by tests/realhost and
tools/record_fixtures.py."""
