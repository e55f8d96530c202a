# virtguests: make demo | make test | make test-all | make lint | make fixtures | make bench | make soak
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all venv test test-slow test-all lint demo fixtures bench soak man install clean
.PHONY: venv-sh1 test-sh1 test-sh1-realhost

all: test

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

# make test: the fast suite, without the tests marked slow (it says how many it left
# out), hypothesis' fast profile, two pytest-xdist workers per core (many tests wait on
# real processes, signals and timeouts: a second worker fills those waits; measured on
# 2 cores: 2 workers 88-97 s, 3 79 s, 4 75 s); a test module stays on one worker
# (module fixtures such as test_dist's make install are built once) and the modules
# that start the most processes go first (tests/conftest.py's order, not xdist's
# most-tests-first); WORKERS overrides;
# make test-slow: only those (the real host included); make test-all: every test (what
# CI runs), one at a time; both at the ci profile's sizes. HYPOTHESIS_PROFILE=fast|ci overrides
# (tests/conftest.py); PYTEST_ARGS adds pytest options (-x, -k NAME, a file).
PYTEST_ARGS ?=
WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) * 2 )))
test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-fast} $(PY) -m pytest -q -m "not slow" \
		-n $(WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-slow: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest -q $(PYTEST_ARGS)

# make test-sh1: the fast suite again in a second venv, $(SH1_VENV), on the oldest
# versions supported (virtguests/deps.py): sh 1.14.2 and PyYAML 6.0, what Debian 12 ships
# (python3-sh, python3-yaml) and Ubuntu's sh. Built like the main venv, same extras.
# make test-sh1-realhost: as root, CI=true, a real-libvirt smoke set through that venv
# (SH1_REALHOST_K selects from tests/realhost/test_e2e.py: save and restore, serial and
# parallel shutdown with events and destroy, status and gueststatus).
SH1_VENV ?= .venv-sh1
SH1_PY := $(SH1_VENV)/bin/python
SH1_STAMP := $(SH1_VENV)/.installed
SH1_PINS ?= sh==1.14.2 PyYAML==6.0
SH1_REALHOST_K ?= test_suspend_saves or test_serial_shutdown or test_parallel_shutdown or \
	test_status_and_gueststatus
$(SH1_STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(SH1_VENV)
	$(SH1_PY) -m pip install --quiet --upgrade pip
	$(SH1_PY) -m pip install --quiet -e '.[test,lint]' $(SH1_PINS)
	touch $(SH1_STAMP)

venv-sh1: $(SH1_STAMP)

test-sh1: $(SH1_STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-fast} $(SH1_PY) -m pytest -q -m "not slow" \
		-n $(WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-sh1-realhost: $(SH1_STAMP)
	CI=$${CI:-true} HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(SH1_PY) -m pytest -q \
		tests/realhost/test_e2e.py -k '$(SH1_REALHOST_K)' $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check virtguests tests tools
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(PY) tools/demo.py

# Needs root: records QEMU forms from a private libvirtd it starts and stops itself.
FIXTURE_ARGS ?= --test-uri test:///default --private-libvirtd
fixtures: $(STAMP)
	$(PY) tools/record_fixtures.py $(FIXTURE_ARGS)

clean:
	rm -rf $(VENV) $(SH1_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	$(PY) tools/bench.py $(BENCH_ARGS)

# make bench-remote (root): issue 13's table on real qemu+ssh, the reference and
# virtguests side by side (tools/remote_bench.py; REMOTE_BENCH_ARGS, e.g. --guests 6).
REMOTE_BENCH_ARGS ?=
.PHONY: bench-remote
bench-remote: $(STAMP)
	$(PY) tools/remote_bench.py $(REMOTE_BENCH_ARGS)

SOAK_ARGS ?= --cycles 50 --scenarios 100
soak: $(STAMP)
	$(PY) tools/soak.py $(SOAK_ARGS)

# -- man page, install, uninstall (see packaging/README.md) ---------------------------
# make install [DESTDIR=...] [PREFIX=/usr/local] [PYTHON=...] [VENDOR=1]: offline, on
# the distribution's Python: pip builds the package with that interpreter's own
# setuptools and wheel (--no-build-isolation --no-index) into its own directory LIBDIR,
# run by a small BINDIR/virtguests wrapper, #!/usr/bin/python3 -I unless PYTHON is
# given. sh and PyYAML are the interpreter's (Debian: python3-sh, python3-yaml);
# VENDOR=1 puts PyPI's into LIBDIR instead (network). Never starts, stops or restarts
# a service.
INSTALL_PYTHON = $(if $(filter file,$(origin PYTHON)),/usr/bin/python3,$(PYTHON))
VENDOR ?=
INSTALL_PIP_FLAGS = --no-build-isolation $(if $(VENDOR),,--no-deps --no-index)
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/virtguests
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
INITDIR ?= /etc/init.d
PIP_FLAGS ?=

.PHONY: uninstall deb

man: build/virtguests.8

build/virtguests.8: doc/virtguests.8.md tools/mkman.py virtguests/__init__.py
	$(PYTHON) tools/mkman.py doc/virtguests.8.md -o $@

install: build/virtguests.8
	@case '$(LIBDIR)' in */virtguests) ;; *) echo "LIBDIR must end in /virtguests" >&2; exit 1;; esac
	@'$(INSTALL_PYTHON)' -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is \
		None for m in ("pip", "setuptools", "wheel")))' 2>/dev/null || { echo \
		"make install builds offline with $(INSTALL_PYTHON)'s pip, setuptools and wheel" \
		"(Debian: apt-get install python3-pip python3-setuptools python3-wheel)" >&2; exit 1; }
	rm -rf '$(DESTDIR)$(LIBDIR)' build/lib build/bdist.*
	'$(INSTALL_PYTHON)' -m pip install --quiet --disable-pip-version-check --no-compile \
		--target='$(DESTDIR)$(LIBDIR)' $(INSTALL_PIP_FLAGS) $(PIP_FLAGS) .
	'$(INSTALL_PYTHON)' -m compileall -q -d '$(LIBDIR)' '$(DESTDIR)$(LIBDIR)'
	install -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(INITDIR)' \
		'$(DESTDIR)$(MANDIR)/man8'
	{ printf '#!%s -I\n' "$$('$(INSTALL_PYTHON)' -c 'import sys; print(sys.executable)')"; \
	  printf '%s\n' '# virtguests: installed by make install; the package is in $(LIBDIR)' \
		'import sys' 'sys.path.insert(0, "$(LIBDIR)")' \
		'from virtguests.cli import console_main' 'console_main()'; \
	} > build/virtguests.wrapper
	install -m 0755 build/virtguests.wrapper '$(DESTDIR)$(BINDIR)/virtguests'
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/virtguests.service.in > build/virtguests.service
	install -m 0644 build/virtguests.service '$(DESTDIR)$(UNITDIR)/virtguests.service'
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/virtguests.init.in > build/virtguests.init
	install -m 0755 build/virtguests.init '$(DESTDIR)$(INITDIR)/virtguests'
	install -m 0644 build/virtguests.8 '$(DESTDIR)$(MANDIR)/man8/virtguests.8'
	@'$(INSTALL_PYTHON)' -I -c 'import sys; sys.path.insert(0, sys.argv[1]); \
		from virtguests import deps; r = deps.refusal(); \
		r and print("warning: virtguests will refuse to run:", r.split(": nothing")[0])' \
		'$(DESTDIR)$(LIBDIR)'
	@echo "Installed. No service was started, stopped or restarted. To use it:"
	@echo "  systemctl daemon-reload; systemctl disable libvirt-guests.service;"
	@echo "  systemctl enable virtguests.service   (takes over at the next boot; see packaging/README.md)"

uninstall:
	@case '$(LIBDIR)' in */virtguests) ;; *) echo "LIBDIR must end in /virtguests" >&2; exit 1;; esac
	rm -rf '$(DESTDIR)$(LIBDIR)'
	rm -f '$(DESTDIR)$(BINDIR)/virtguests' '$(DESTDIR)$(UNITDIR)/virtguests.service' \
		'$(DESTDIR)$(INITDIR)/virtguests' '$(DESTDIR)$(MANDIR)/man8/virtguests.8'
	@echo "Removed the files; the list file and state in /var/lib/libvirt are kept."
	@echo "Disable virtguests.service first (systemctl disable virtguests.service), or"
	@echo "its stop at the next shutdown fails and no guest is saved."

# -- make deb: a binary Debian package, offline, with Debian's own tooling ---------
# (packaging/README.md; .ci/install-deb-deps installs the tools). The files the
# package is built from and packaging/debian are copied into build/deb/src, where
# dpkg-buildpackage runs (nothing it writes lands in the tree); the .deb ends in build/.
DEB_SOURCES = setup.cfg setup.py README.md virtguests tools/mkman.py tools/mkconfig.py doc \
	fixtures packaging
DEB_OPTIONAL = pyproject.toml LICENSE COPYING MANIFEST.in
deb:
	rm -rf build/deb build/virtguests_*.deb
	mkdir -p build/deb/src
	tar -cf - --exclude=__pycache__ --exclude='*.egg-info' --exclude=packaging/debian \
		$(DEB_SOURCES) $(wildcard $(DEB_OPTIONAL)) | tar -xf - -C build/deb/src
	cp -R packaging/debian build/deb/src/debian
	cd build/deb/src && dpkg-buildpackage -b -us -uc
	mv build/deb/virtguests_*.deb build/
	@echo "Built: $$(ls build/virtguests_*.deb)"

# -- make fresh-debian-check: the .deb on a fresh Debian 12 (packaging/README.md) ----
# As root, after .ci/install-deb-deps and .ci/install-fresh-deps: builds the .deb when
# there is none or the tree is newer, installs it in a new minimal Debian 12 chroot
# (debootstrapped once into FRESH_CACHE) with apt-get alone, and runs the real-host
# stop, start and status tests through that chroot's /usr/bin/virtguests
# (tools/fresh_debian.py; FRESH_ARGS adds its options, e.g. --test-k 'EXPR').
FRESH_CACHE ?= $(HOME)/.cache/virtguests-fresh-debian
FRESH_ARGS ?= --test-k
.PHONY: fresh-debian-check
fresh-debian-check: $(STAMP)
	@deb=$$(ls build/virtguests_*.deb 2>/dev/null | head -n 1); \
	if [ -z "$$deb" ] || [ -n "$$(find $(DEB_SOURCES) $(wildcard $(DEB_OPTIONAL)) \
		-newer "$$deb" -print -quit)" ]; then $(MAKE) --no-print-directory deb; fi
	$(PY) tools/fresh_debian.py --deb "$$(ls build/virtguests_*.deb)" \
		--cache '$(FRESH_CACHE)' $(FRESH_ARGS)
