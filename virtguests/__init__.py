"""virtguests: a drop-in replacement for libvirt's libvirt-guests service."""

__version__ = "0.1.0"
