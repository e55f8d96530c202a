"""A fake ``virsh`` that simulates a libvirt host described by a YAML file.

Tests and benchmarks put it on ``PATH`` as ``virsh`` (see
:func:`virtguests.testing.fakevirsh.main.write_shim`); users run it as
``virtguests-fake-virsh`` (or ``python -m virtguests.testing.fakevirsh``).
It answers in the formats of the real virsh recordings in ``fixtures/``
(tables, messages and errors are rendered from those recordings, with the
guest names/uuids substituted) and keeps the host state in a JSON file that
concurrent fake processes update under an ``flock``.

Environment:

``VIRTGUESTS_FAKE_HOST``
    path of the host YAML (required).
``VIRTGUESTS_FAKE_STATE``
    state file (default ``<host>.state.json``); rebuilt from the host YAML
    when missing or when the YAML changed.
``VIRTGUESTS_FAKE_LOG``
    append one JSON line per call:
    ``{"argv": [...], "pid": N, "call": ID, "start": t, "end": t, "exit": rc}``
    (``call``: the pid, or ``PID.N`` for the Nth line a session read).
``VIRTGUESTS_FAKE_NOW_FILE``
    "now" is the float in that file instead of ``time.time()``; waiting for
    virtual time polls the file every 0.01 s.
``VIRTGUESTS_FIXTURES``
    directory of the recordings (default: the copy an installed package carries,
    ``virtguests/testing/recordings``, else ``fixtures/`` of the source tree; none
    of them is an error naming where it looked).

Host YAML (unknown keys are rejected)::

    uris:
      default:                  # virsh without -c (or $LIBVIRT_DEFAULT_URI if listed)
        driver: qemu            # test | qemu (default: test for test:... URIs)
        uri: qemu:///system     # what `virsh uri` prints (default: the key)
        unreachable: false      # every call fails like the recorded connect error
        unreachable_until: 0    # ... until now >= this (virtual) epoch time
        unreachable_calls: 0    # ... for the first N calls
        hang: false             # every call sleeps until killed
        hang_after_calls: 0     # every call after the first N (processes) hangs
                                # (with these, the state's "calls" counts processes,
                                # killed ones too)
        host_uuid: ...          # `capabilities`' host UUID (default: uuid5 of the key);
                                # the same on two URIs: one host, migrate between
                                # them is refused as libvirt refuses it
        memory_mib: 65536       # `nodememstats` total
        free_mib: 32768         # `nodememstats` free (buffers and cached 0), less the
                                # memory of guests active now beyond those at the start
        lock_wait: 30           # seconds a command waits for a guest's job lock (libvirt:
                                # 30, fixed); shorter only to fit every order of "save
                                # ends", "lock wait ends" and SAVE_TIMEOUT in a short test
        guests:
          - name: web1
            uuid: ...           # default: uuid5(NAMESPACE_URL, "<uri key>/<name>")
            state: running      # running | paused | shutoff
            id: 1               # default: assigned 1, 2, ... to active guests
            reason: booted      # domstate --reason (default by driver and state)
            persistent: true
            managed_save: false
            save_seconds: 0.05  # managedsave blocks this long (a running guest is
                                # "paused (saving)" meanwhile; a paused one keeps its
                                # reason, as libvirt does)
            saving_seconds: 0   # another job's managedsave is running, ending this long
                                # after the host was built: a running guest is "paused
                                # (saving)", a paused one keeps its reason; domjobinfo
                                # shows the save job; managedsave and shutdown wait
                                # lock_wait for its lock and fail, and destroy loses
                                # the guest's memory (no image)
            shutdown_seconds: 1 # shut off this long after `shutdown`
            ignore_shutdown: false
            fail_save: false    # managedsave / start / shutdown fail (exit 1)
            fail_start: false
            fail_shutdown: false
            start_seconds: 0    # start blocks this long
            hang: []            # subcommands that hang for this guest
            agent: false        # domtime --sync works (qemu driver)
            memory_mib: 1024    # sizes in domjobinfo during a save or a migration,
                                # dominfo's Max memory
            migrate_seconds: null  # a migration takes this long (default: memory_mib
                                # at 512 MiB/s); the guest runs here meanwhile, and
                                # arrives "paused (migrating)" at the destination,
                                # then runs there "running (migrated)", or, paused
                                # here, stays paused with its reason ("paused (user)")
            fail_migrate: false # migrate is refused (recorded: a disk only here)

    faults: []                  # optional: fault rules ("Fault injection" below)

Unsupported argv (commands, options) exit 2 with a "fakevirsh:" message.

Migration (``migrate [--live] [--persistent] [--undefinesource] ... DOMAIN DESTURI``,
DESTURI a key of ``uris`` or what one's ``virsh uri`` prints; qemu driver): the
recorded answers (``fixtures/qemu-migrate-*``); refused when DESTURI is
``unreachable`` (the recorded connect error, naming its socket), has the source's
``host_uuid``, already runs the guest, or the guest has ``fail_migrate``; a DESTURI
with ``hang`` hangs it.  Meanwhile ``domjobinfo`` shows the outgoing migration's
progress at the source (and fails at the destination, as recorded) and
``domjobabort`` (or ``destroy``) ends it: the migrate call fails as recorded and the
guest runs on at its source.  A migrate call killed at its timeout (SIGKILL too: the
next call finds its process gone) or by SIGTERM cancels its migration, as libvirt does
at once when its client goes (tests/realhost: the guest runs on at home).
``dominfo``, ``nodememstats`` and ``capabilities`` answer in the recorded formats.
``event --loop --event lifecycle`` prints the recorded lines of a migration
(``fixtures/qemu-event-migrate*``): at the source ``Suspended Migrated``, ``Stopped
Migrated`` (a paused guest: only the latter); at the destination ``Started Migrated``
when the copy appears, then ``Defined Added`` (persistent there) and ``Resumed
Migrated`` (a paused guest: ``Suspended Paused``) when it has arrived.  Other starts
and stops print ``Started Booted`` / ``Stopped Shutdown`` (not recorded).
Faults: ``fail_migrate``, a ``hang: [migrate]`` guest, an ``unreachable`` or ``hang``
destination, or fault rules (``cmd: migrate``, e.g. ``error: qemu-migrate-unreachable``).

Fault injection (the ``faults:`` list of the host YAML)
    Kept apart from the host simulation: a rule picks virsh calls and makes
    them misbehave; the host itself behaves as described above.  A *call* is
    one virsh process, or one line a session reads on stdin (one line of
    ``VIRTGUESTS_FAKE_LOG`` either way: see ``interactive``); a command string
    matches a rule when any of its commands does, and the fault hits the first
    such command.  Every rule that matches a call counts it (counters live in
    the state file, under its flock, so they hold across the separate fake
    processes); the first rule that fires decides the fault::

        faults:
          - cmd: list           # a subcommand, a list of them, or "*" (default: "*")
            options: [uuid]     # only calls with exactly these options (no dashes)
            uri: default        # only on this URI key of the host file (or a list)
            guest: web1         # only calls naming this guest (name or UUID, or a
                                # list); calls naming no guest never match
            nth: 2              # fire on the 2nd matching call only
            after: 1            # fire on every matching call after the first 1
            p: 0.25             # fire with this probability, drawn from seed and a
            seed: 7             #   per-(rule, subcommand, URI, guest) call counter
            action: fail        # fail | hang | slow | garbage | signal
            error: connect      # fail: a recording in fixtures/ by file stem, or
                                #   connect | internal | invalid | unsupported |
                                #   missing (default: connect); exit status, stderr
                                #   and stdout are the recording's
            seconds: 5          # slow: answer this many (virtual) seconds after the
                                #   dispatch
            output: binary      # garbage: binary | truncated | not-uuid (exit 0)
            signal: TERM        # signal: TERM | INT to the fake's parent (the
                                #   virtguests that ran this virsh), then go on

    ``nth``, ``after`` and ``p`` combine (all must hold); with none of them a
    rule fires on every matching call.  ``hang`` sleeps until killed (a
    wedged URI: ``{cmd: "*", uri: X, after: 1, action: hang}`` hangs every
    call after the first, i.e. after the listing at ``stop``); ``slow``
    applies the command at once and answers late, through the fake's clock
    (``VIRTGUESTS_FAKE_NOW_FILE``); ``garbage`` prints output no parser may
    accept: undecodable bytes, the real output cut inside its first line, or
    a table header line before it.

``VIRTGUESTS_FAKE_FAULTS=off``
    ignore the fault rules for this call (counters untouched): for a run
    without faults on the same host state, and for tests asking the host.
``VIRTGUESTS_FAKE_JOURNAL``
    append one JSON line per command *as it is dispatched* (so killed and
    hung calls are there too): ``{"t", "spawned" (when the process was forked:
    when its caller started the call), "now" (the fake's clock), "pid", "call"
    (as in the log), "uri",
    "cmd", "argv", "guest" (UUID or null), "state", "job" (the guest's job
    then: "save", "start" or null), "fault" (the action injected, or null)}``.

The hot path imports only ``os``, ``sys``, ``time``, ``fcntl``, ``_signal`` and
``_json`` (through ``jsonfile``: ``json`` and ``signal`` import ``re`` and ``enum``, which
cost a call a third of its CPU); YAML is read only when the state file is (re)built.

Modules: ``commandline`` (argv and command strings), ``process`` (what a call sees
of its process: environment, parent, fork time), ``state`` (the locked state
file, the fake's clock, jobs, guest lookup), ``jsonfile`` (its JSON), ``hostfile``
(the host YAML, read only to (re)build the state), ``faults`` (the fault layer),
``rendering`` (output from the recordings), ``commands`` (what each command does),
``main`` (the entry point).
This package imports none of them: a call loads only what ``main`` needs.
``virtguests.testing.inprocess`` runs the same ``execute`` in a test's process,
giving each call its own process (``CallerProcess``) and clock (``HostClock``).
"""
