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

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

# make test: the fast suite, without the tests marked slow (it says how many it left
# out), hypothesis' fast profile, one pytest-xdist worker per core (a test module stays
# on one worker: module fixtures such as test_dist's make install are built once);
# make test-slow: only those (the real host included); make test-all: every test (what
# CI runs), one at a time; both at the ci profile's sizes. HYPOTHESIS_PROFILE=fast|ci overrides
# (tests/conftest.py); PYTEST_ARGS adds pytest options (-x, -k NAME, a file).
PYTEST_ARGS ?=
test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-fast} $(PY) -m pytest -q -m "not slow" \
		-n auto --dist loadscope $(PYTEST_ARGS)

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
$(SH1_STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(SH1_VENV)
	$(SH1_PY) -m pip install --quiet --upgrade pip
	$(SH1_PY) -m pip install --quiet -e '.[test,lint]' $(SH1_PINS)
	touch $(SH1_STAMP)

venv-sh1: $(SH1_STAMP)

test-sh1: $(SH1_STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-fast} $(SH1_PY) -m pytest -q -m "not slow" \
		-n auto --dist loadscope $(PYTEST_ARGS)

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
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	$(PY) tools/bench.py $(BENCH_ARGS)

SOAK_ARGS ?= --cycles 50 --scenarios 100
soak: $(STAMP)
	$(PY) tools/soak.py $(SOAK_ARGS)

# -- man page, install, uninstall (see dist/README.md) ---------------------------
# make install [DESTDIR=...] [PREFIX=/usr/local] [PYTHON=python3]: the package goes
# into its own directory LIBDIR (with its dependencies, unless PIP_FLAGS=--no-deps),
# run by a small BINDIR/virtguests wrapper. Never starts, stops or restarts a service.
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/virtguests
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
INITDIR ?= /etc/init.d
PIP_FLAGS ?=

.PHONY: uninstall

man: build/virtguests.8

build/virtguests.8: doc/virtguests.8.md tools/mkman.py virtguests/__init__.py
	$(PYTHON) tools/mkman.py doc/virtguests.8.md -o $@

install: build/virtguests.8
	@case '$(LIBDIR)' in */virtguests) ;; *) echo "LIBDIR must end in /virtguests" >&2; exit 1;; esac
	rm -rf '$(DESTDIR)$(LIBDIR)' build/lib build/bdist.*
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile \
		--target='$(DESTDIR)$(LIBDIR)' $(PIP_FLAGS) .
	$(PYTHON) -m compileall -q -d '$(LIBDIR)' '$(DESTDIR)$(LIBDIR)'
	install -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(INITDIR)' \
		'$(DESTDIR)$(MANDIR)/man8'
	{ printf '#!%s -I\n' "$$($(PYTHON) -c 'import sys; print(sys.executable)')"; \
	  printf '%s\n' '# virtguests: installed by make install; the package is in $(LIBDIR)' \
		'import sys' 'sys.path.insert(0, "$(LIBDIR)")' \
		'from virtguests.cli import console_main' 'console_main()'; \
	} > build/virtguests.wrapper
	install -m 0755 build/virtguests.wrapper '$(DESTDIR)$(BINDIR)/virtguests'
	sed 's|@BINDIR@|$(BINDIR)|g' dist/virtguests.service > build/virtguests.service
	install -m 0644 build/virtguests.service '$(DESTDIR)$(UNITDIR)/virtguests.service'
	sed 's|@BINDIR@|$(BINDIR)|g' dist/virtguests.init > build/virtguests.init
	install -m 0755 build/virtguests.init '$(DESTDIR)$(INITDIR)/virtguests'
	install -m 0644 build/virtguests.8 '$(DESTDIR)$(MANDIR)/man8/virtguests.8'
	@echo "Installed. No service was started, stopped or restarted. To use it:"
	@echo "  systemctl daemon-reload; systemctl disable libvirt-guests.service;"
	@echo "  systemctl enable virtguests.service   (takes over at the next boot; see dist/README.md)"

uninstall:
	@case '$(LIBDIR)' in */virtguests) ;; *) echo "LIBDIR must end in /virtguests" >&2; exit 1;; esac
	rm -rf '$(DESTDIR)$(LIBDIR)'
	rm -f '$(DESTDIR)$(BINDIR)/virtguests' '$(DESTDIR)$(UNITDIR)/virtguests.service' \
		'$(DESTDIR)$(INITDIR)/virtguests' '$(DESTDIR)$(MANDIR)/man8/virtguests.8'
	@echo "Removed the files; the list file and state in /var/lib/libvirt are kept."
	@echo "Disable virtguests.service first (systemctl disable virtguests.service), or"
	@echo "its stop at the next shutdown fails and no guest is saved."
