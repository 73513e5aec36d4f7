# libdmio: build, install, test.
#   make            library (.so with soname, .a) and include/dm_io.h
#   make demo       build everything and run the mirror demo on temporary files
#   make test       every test (installs missing system packages when root)
#   make install    PREFIX=/usr/local DESTDIR=   (make uninstall removes)
#   make plugin     the nbdkit plugin, build/nbdkit-dmio-plugin.so (part of make)
#   make demo-nbd   the mirror served over NBD by nbdkit, a leg hanging
#   make demo-remote  a mirror with a leg on an NBD server that pauses
#   make fio-engine   build/libdmio-fio.so, a fio external ioengine (fio-engine/)

SHELL    := /bin/bash
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
MAJOR    := $(word 1,$(subst ., ,$(VERSION)))
PREFIX   ?= /usr/local
LIBDIR   ?= $(PREFIX)/lib
INCDIR   ?= $(PREFIX)/include
PCDIR    ?= $(LIBDIR)/pkgconfig
DESTDIR  ?=
CC       ?= cc
CFLAGS   ?= -O2 -g
WARN     := -Wall -Wextra -Werror
BUILD    := build
SONAME   := libdmio.so.$(MAJOR)
SOFILE   := libdmio.so.$(VERSION)
CARGO    ?= cargo
CBINDGEN_VERSION := 0.29.4
CBINDGEN := $(CURDIR)/.tools/bin/cbindgen
RUST_SRC := $(shell find src -name '*.rs') Cargo.toml build.rs dmio.map

.PHONY: all lib plugin plugin-if-possible test-nbdkit demo-nbd demo-remote header check-header demo demo-basic test test-rust test-c test-c-threads test-c-aio test-c-asan \
        test-c-asan-aio test-c-debug test-c-valgrind test-c-valgrind-uring test-c-valgrind-aio soak fuzz test-fuzz test-header test-install test-python \
        deps install uninstall clean lint mirror test-mirror bench test-bench-smoke

# The header is checked in; `make header` regenerates it, `make check-header`
# (part of `make test`) fails when it is stale.
all: lib plugin-if-possible

$(BUILD)/$(SOFILE) $(BUILD)/libdmio.a: $(RUST_SRC)
	$(CARGO) build --release --locked
	@mkdir -p $(BUILD)
	cp target/release/libdmio.so $(BUILD)/$(SOFILE)
	ln -sf $(SOFILE) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libdmio.so
	cp target/release/libdmio.a $(BUILD)/libdmio.a

lib: $(BUILD)/$(SOFILE)

$(CBINDGEN):
	$(CARGO) install --locked --quiet cbindgen --version $(CBINDGEN_VERSION) --root $(CURDIR)/.tools

header: $(CBINDGEN)
	$(CBINDGEN) --quiet --config cbindgen.toml --crate dmio --output include/dm_io.h

# Fails when the checked-in header differs from a fresh generation.
check-header: $(CBINDGEN)
	@$(CBINDGEN) --quiet --config cbindgen.toml --crate dmio --output $(BUILD)/dm_io.h.fresh
	@if cmp -s $(BUILD)/dm_io.h.fresh include/dm_io.h; then \
		echo "header: include/dm_io.h matches cbindgen $(CBINDGEN_VERSION)"; \
	else \
		diff -u include/dm_io.h $(BUILD)/dm_io.h.fresh | head -40; \
		echo "header: include/dm_io.h is stale: run 'make header' and commit it"; exit 1; \
	fi

$(BUILD)/demo: examples/demo.c include/dm_io.h $(BUILD)/$(SOFILE)
	$(CC) -std=c99 $(WARN) -pedantic $(CFLAGS) -Iinclude $< -L$(BUILD) -ldmio -lpthread \
		-Wl,-rpath,'$$ORIGIN' -o $@

# The main demo: a two-leg mirror riding through a hung leg, on temporary
# files with the built-in fault injection (examples/mirror/demo.c).
demo: all mirror
	@$(BUILD)/mirror-demo

# The first, smallest example: one write to three files, read back.
demo-basic: all $(BUILD)/demo
	$(BUILD)/demo

# The nbdkit plugin (nbdkit/): the reference mirror served over NBD, with
# libdmio linked in statically so the installed plugin needs no
# LD_LIBRARY_PATH; it exports only plugin_init (nbdkit/plugin.map).
HAVE_NBDKIT      := $(shell pkg-config --exists nbdkit 2>/dev/null && echo yes)
NBDKIT_PLUGINDIR ?= $(shell pkg-config --variable=plugindir nbdkit 2>/dev/null)
PLUGIN     := $(BUILD)/nbdkit-dmio-plugin.so
PLUGIN_SRC := nbdkit/dmio-plugin.c nbdkit/params.c nbdkit/io.c nbdkit/status.c $(sort $(wildcard examples/mirror/mirror*.c))
PLUGIN_DEP := $(PLUGIN_SRC) $(wildcard nbdkit/*.h) examples/mirror/mirror.h examples/mirror/mirror_int.h nbdkit/plugin.map \
	include/dm_io.h
# What the Rust standard library needs from the system when linked statically.
RUST_STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

# -z nodelete: libdmio's shared engine threads outlive the plugin's unload.
$(PLUGIN): $(PLUGIN_DEP) $(BUILD)/libdmio.a
	$(CC) -std=c11 $(WARN) -D_GNU_SOURCE $(CFLAGS) -fPIC -shared -Iinclude -Iexamples/mirror \
		$(shell pkg-config --cflags nbdkit 2>/dev/null) $(PLUGIN_SRC) $(BUILD)/libdmio.a \
		-Wl,--version-script=nbdkit/plugin.map -Wl,--exclude-libs,ALL -Wl,-z,nodelete \
		$(RUST_STATIC_LIBS) -o $@.tmp && mv $@.tmp $@

# Both check for nbdkit's header when they run, not when make starts: in
# `make test`, `make deps` may have just installed it (a sub-make then
# builds the plugin with the fresh pkg-config answers).
plugin: lib
	@pkg-config --exists nbdkit || { echo "plugin: nbdkit's plugin header is missing: apt-get install \
		nbdkit-plugin-dev (or run 'make deps' as root)"; exit 1; }
	@$(MAKE) --no-print-directory $(PLUGIN)

# `make` builds the plugin when nbdkit's header is there, and says so loudly
# when it is not (`make test` installs it first, through `make deps`).
plugin-if-possible: lib
	@if pkg-config --exists nbdkit; then $(MAKE) --no-print-directory $(PLUGIN); else \
		echo "*** plugin: NOT BUILT: nbdkit-plugin-dev is not installed (make deps, as root, installs it)"; fi

$(BUILD)/nbdkit-tests/ackwriter: nbdkit/tests/ackwriter.c examples/mirror/block.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) -D_GNU_SOURCE $(CFLAGS) -Iexamples/mirror $< $$(pkg-config --cflags --libs libnbd) -o $@

test-nbdkit: plugin mirror
	@$(MAKE) --no-print-directory $(BUILD)/nbdkit-tests/ackwriter
	@echo "== nbdkit plugin tests (nbdkit/tests)"
	@OUT=$(CURDIR)/$(BUILD) ./nbdkit/tests/run.sh

demo-remote: mirror
	@OUT=$(abspath $(BUILD)) bash examples/mirror/demo-remote.sh

demo-nbd: plugin
	@./nbdkit/demo.sh

# Installs missing system packages (as root); otherwise says what is missing.
deps:
	@./scripts/deps.sh

test: deps all lint check-header test-rust test-header test-c test-c-threads test-c-aio test-c-debug test-c-asan \
      test-c-asan-aio test-c-valgrind test-c-valgrind-uring test-c-valgrind-aio test-fuzz test-install test-python test-mirror test-nbdkit \
      test-bench-smoke test-fio-engine
	@echo "make test: all suites passed"

test-rust:
	$(CARGO) test --release --locked

# The C suite runs once per engine; DMIO_ENGINE=uring (aio) makes a machine
# without io_uring (Linux AIO) fail here instead of silently testing a
# fallback twice.
test-c: all
	@echo "== C tests, io_uring engine"
	@DMIO_ENGINE=uring $(MAKE) --no-print-directory -C c-tests run

test-c-threads: all
	@echo "== C tests, thread-pool engine"
	@DMIO_ENGINE=threads $(MAKE) --no-print-directory -C c-tests run

test-c-aio: all
	@echo "== C tests, Linux AIO engine"
	@DMIO_ENGINE=aio $(MAKE) --no-print-directory -C c-tests run

# The C suite against a debug build of the library (overflow checks and
# debug assertions on: an arithmetic slip panics instead of wrapping).
test-c-debug: all
	@echo "== C tests, debug build of the library (overflow checks)"
	@$(CARGO) build --locked
	@mkdir -p $(BUILD)/debug-lib
	@ln -sf $(abspath target/debug/libdmio.so) $(BUILD)/debug-lib/$(SONAME)
	@LD_LIBRARY_PATH=$(BUILD)/debug-lib DMIO_SOAK_REGIONS=100000 DMIO_THREADS_SECONDS=3 \
		$(MAKE) --no-print-directory -C c-tests run

# C tests built with AddressSanitizer + UBSan (io_uring engine).
test-c-asan: all
	@echo "== C tests, AddressSanitizer"
	@DMIO_ENGINE=uring DMIO_SOAK_REGIONS=200000 DMIO_THREADS_SECONDS=4 SAN=asan \
		$(MAKE) --no-print-directory -C c-tests run

# The same on the Linux AIO engine (shorter soak: the uring run covers the rest).
test-c-asan-aio: all
	@echo "== C tests, AddressSanitizer (Linux AIO engine)"
	@DMIO_ENGINE=aio DMIO_SOAK_REGIONS=100000 DMIO_THREADS_SECONDS=2 SAN=asan \
		$(MAKE) --no-print-directory -C c-tests run

# valgrind memcheck must report nothing (run.sh explains the engine choice).
test-c-valgrind: all
	@echo "== C tests, valgrind memcheck (thread-pool engine)"
	@VALGRIND=1 DMIO_SOAK_REGIONS=20000 DMIO_THREADS_SECONDS=2 \
		$(MAKE) --no-print-directory -C c-tests run

# The io_uring engine under memcheck: DMIO_URING_WAIT=poll makes its threads
# wait in ppoll(2), since valgrind 3.19 stops every thread while one waits
# inside io_uring_enter.
test-c-valgrind-uring: all
	@echo "== C tests, valgrind memcheck (io_uring engine, DMIO_URING_WAIT=poll)"
	@VALGRIND=1 DMIO_ENGINE=uring DMIO_URING_WAIT=poll DMIO_SOAK_REGIONS=20000 \
		DMIO_THREADS_SECONDS=2 $(MAKE) --no-print-directory -C c-tests run

# The AIO engine under memcheck. valgrind 3.19 knows io_setup, io_submit
# and io_getevents; the AIO threads sleep in ppoll(2), as valgrind needs.
# DMIO_URING_WAIT=poll: engine_fallback first checks that io_uring is the
# default (see test-c-valgrind-uring).
test-c-valgrind-aio: all
	@echo "== C tests, valgrind memcheck (Linux AIO engine)"
	@VALGRIND=1 DMIO_ENGINE=aio DMIO_URING_WAIT=poll DMIO_SOAK_REGIONS=20000 DMIO_THREADS_SECONDS=2 \
		$(MAKE) --no-print-directory -C c-tests run

# The soak for longer than `make test` runs it.
SOAK_REGIONS ?= 20000000
soak: all
	@DMIO_SOAK_REGIONS=$(SOAK_REGIONS) DMIO_SOAK_SECONDS=7200 TEST_TIMEOUT=7300 \
		$(MAKE) --no-print-directory -C c-tests run T=stress_soak

# Fuzzing the ABI with cargo-fuzz (libFuzzer + AddressSanitizer). This
# machine has only a stable toolchain; RUSTC_BOOTSTRAP=1 lets it accept the
# -Zsanitizer flag cargo-fuzz passes (the sanitizer runtimes ship with it).
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := $(CURDIR)/.tools/bin/cargo-fuzz
FUZZ_SECONDS ?= 600
FUZZ_RUNS ?= 5000
NBD_FUZZ_RUNS ?= 200000
$(CARGO_FUZZ):
	$(CARGO) install --locked --quiet cargo-fuzz --version $(CARGO_FUZZ_VERSION) --root $(CURDIR)/.tools

fuzz: $(CARGO_FUZZ)
	@mkdir -p fuzz/corpus/abi_sequence
	RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run abi_sequence -- -max_len=512 -len_control=0 \
		-max_total_time=$(FUZZ_SECONDS)

test-fuzz: $(CARGO_FUZZ)
	@echo "== fuzz: $(FUZZ_RUNS) ABI call sequences under AddressSanitizer"
	@mkdir -p fuzz/corpus/abi_sequence
	@RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run abi_sequence -- -max_len=512 -len_control=0 \
		-runs=$(FUZZ_RUNS) -seed=1 2>&1 | grep -E 'DONE|Done|ERROR|SUMMARY|panicked' ; \
		test $${PIPESTATUS[0]} -eq 0
	@echo "== fuzz: $(NBD_FUZZ_RUNS) hostile NBD server byte streams (src/nbd) under AddressSanitizer"
	@mkdir -p fuzz/corpus/nbd_client
	@RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run nbd_client fuzz/corpus/nbd_client fuzz/seeds/nbd_client -- -max_len=40000 \
		-runs=$(NBD_FUZZ_RUNS) -seed=1 2>&1 | grep -E 'DONE|Done|ERROR|SUMMARY|panicked' ; \
		test $${PIPESTATUS[0]} -eq 0

test-header: all
	@./scripts/test-header.sh

test-install: all
	@./scripts/test-install.sh

# libdmio side by side with fio (bench/README.md); not part of `make test`,
# which runs only test-bench-smoke, a tiny run of every case (< 60 s).
bench: all
	@$(MAKE) --no-print-directory -C bench run

test-bench-smoke: all
	@echo "== benchmark smoke run (bench/)"
	@$(MAKE) --no-print-directory -C bench smoke

# The reference mirror (examples/mirror), built like any user would build it:
# against a staged `make install` (PREFIX=/usr), found through pkg-config.
MIRROR_STAGE := $(CURDIR)/$(BUILD)/stage
MIRROR_MAKE = $(MAKE) --no-print-directory -C examples/mirror STAGE=$(MIRROR_STAGE) OUT=$(CURDIR)/$(BUILD)
mirror: all
	@$(MAKE) --no-print-directory install DESTDIR=$(MIRROR_STAGE) PREFIX=/usr LIBDIR=/usr/lib \
		INCDIR=/usr/include PCDIR=/usr/lib/pkgconfig >/dev/null
	@$(MIRROR_MAKE)

test-mirror: mirror
	@echo "== mirror tests (examples/mirror)"
	@$(MIRROR_MAKE) test

# The Python binding (python/dmio, ctypes) against build/libdmio.so.0.
test-python: all
	@echo "== Python binding tests"
	@python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest
	DMIO_LIBRARY=$(CURDIR)/$(BUILD)/$(SONAME) python3 -m pytest -q python/tests

# The fuzz crate is linted like the library (its own Cargo.toml denies
# undocumented unsafe blocks).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings
	rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs
	cd fuzz && $(CARGO) clippy --locked --all-targets -- -D warnings

install: all
	install -D -m 0755 $(BUILD)/$(SOFILE) $(DESTDIR)$(LIBDIR)/$(SOFILE)
	ln -sf $(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libdmio.so
	install -D -m 0644 $(BUILD)/libdmio.a $(DESTDIR)$(LIBDIR)/libdmio.a
	install -D -m 0644 include/dm_io.h $(DESTDIR)$(INCDIR)/dm_io.h
	@mkdir -p $(DESTDIR)$(PCDIR)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' \
		pkgconfig/dmio.pc.in > $(DESTDIR)$(PCDIR)/dmio.pc
	chmod 0644 $(DESTDIR)$(PCDIR)/dmio.pc
ifeq ($(HAVE_NBDKIT),yes)
	install -D -m 0755 $(PLUGIN) $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-dmio-plugin.so
else
	@echo "*** install: the nbdkit plugin is not installed (nbdkit-plugin-dev is missing)"
endif

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/$(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME) \
	      $(DESTDIR)$(LIBDIR)/libdmio.so $(DESTDIR)$(LIBDIR)/libdmio.a \
	      $(DESTDIR)$(INCDIR)/dm_io.h $(DESTDIR)$(PCDIR)/dmio.pc
	$(if $(NBDKIT_PLUGINDIR),rm -f $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-dmio-plugin.so)

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
	@$(MAKE) --no-print-directory -C c-tests clean

# fio over libdmio (fio-engine/README.md): build/libdmio-fio.so, built
# against the configured Debian source of the installed fio, which
# scripts/fio-source.sh fetches once into .tools/fio-src (not part of plain
# `make`); test-fio-engine runs short fio jobs through it.
.PHONY: fio-engine test-fio-engine
fio-engine: lib
	@$(MAKE) --no-print-directory -C fio-engine OUT=$(CURDIR)/$(BUILD)

test-fio-engine: fio-engine
	@echo "== fio engine tests (fio-engine/tests)"
	@$(MAKE) --no-print-directory -C fio-engine OUT=$(CURDIR)/$(BUILD) test
